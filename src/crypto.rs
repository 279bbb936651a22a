//! age encryption of stored backups (age-encryption.org/v1, the `age` crate): recipients from
//! the config, identities from files, and the stream wrappers the backup and acquire pipelines
//! use.
//!
//! - Recipients ([`Recipients::from_config`]): `encryption.age_recipients` (also
//!   `ETCD_LIFEBOAT_AGE_RECIPIENTS`) and `encryption.age_recipients_file` (as `age -R` reads it:
//!   one recipient per line, `#` comments), each `age1...` (X25519), `ssh-ed25519 ...` or
//!   `ssh-rsa ...`. Their public strings, without ssh comments, go into the manifest.
//! - Identities ([`Identities::load`]): files given with `--identity` (or
//!   `ETCD_LIFEBOAT_AGE_IDENTITY_FILE`, comma-separated): `age-keygen` output, unencrypted
//!   OpenSSH ed25519/rsa private keys, and identity files encrypted with `age -p`, whose
//!   passphrase comes from `ETCD_LIFEBOAT_AGE_PASSPHRASE`, else a prompt on the terminal.
//!
//! No key material is ever logged or written anywhere but the age header.

use std::fmt::Write as _;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use age::secrecy::SecretString;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// First line of an age v1 file (binary format).
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// First line of an ASCII-armored age file.
pub const AGE_ARMOR_MAGIC: &[u8] = b"-----BEGIN AGE ENCRYPTED FILE-----";
/// Environment variable holding the passphrase of `age -p` encrypted identity files.
pub const PASSPHRASE_ENV: &str = "ETCD_LIFEBOAT_AGE_PASSPHRASE";
/// Environment variable naming identity files (comma-separated), as `--identity` does.
pub const IDENTITY_ENV: &str = "ETCD_LIFEBOAT_AGE_IDENTITY_FILE";
/// Largest identity or recipients file read (bytes); real ones are a few KiB.
const MAX_KEY_FILE: u64 = 1 << 20;
/// Highest scrypt work factor accepted for a passphrase-protected identity (age's own CLI
/// accepts up to 2^22 by default; `age -p` writes 2^18).
const MAX_SCRYPT_WORK_FACTOR: u8 = 22;

/// Errors of loading keys and of decrypting.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// An identity file cannot be read.
    #[error("identity file {path}: {source}; pass a readable file with --identity (env ETCD_LIFEBOAT_AGE_IDENTITY_FILE)")]
    IdentityRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An identity file holds no usable identity.
    #[error("identity file {path}: {reason}")]
    IdentityInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (never its content).
        reason: String,
    },
    /// A passphrase-protected identity file could not be decrypted.
    #[error("identity file {path} is passphrase-protected (age -p) and {reason}")]
    Passphrase {
        /// The file.
        path: PathBuf,
        /// Why it failed and what to do.
        reason: String,
    },
}

/// The recipients a backup is encrypted to.
pub struct Recipients {
    keys: Vec<Box<dyn age::Recipient + Send + Sync>>,
    public: Vec<String>,
}

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.public).finish()
    }
}

/// Parses one recipient string; returns it and its public form (ssh comment stripped).
fn parse_recipient(s: &str) -> Result<(Box<dyn age::Recipient + Send + Sync>, String), String> {
    let s = s.trim();
    if s.starts_with("age1") {
        let r: age::x25519::Recipient = s
            .parse()
            .map_err(|e| format!("{s:?} is not an age X25519 recipient ({e}); copy the \"public key\" line that age-keygen prints"))?;
        let public = r.to_string();
        return Ok((Box::new(r), public));
    }
    if s.starts_with("ssh-") {
        let r: age::ssh::Recipient = s.parse().map_err(|e| {
            let why = match e {
                age::ssh::ParseRecipientKeyError::RsaModulusTooLarge => {
                    "the RSA key is larger than 4096 bits".to_string()
                }
                age::ssh::ParseRecipientKeyError::RsaModulusTooSmall => {
                    "the RSA key is smaller than 2048 bits".to_string()
                }
                age::ssh::ParseRecipientKeyError::Unsupported(t) => {
                    format!("key type {t} is not supported (use ssh-ed25519 or ssh-rsa)")
                }
                _ => "not a valid ssh public key".to_string(),
            };
            let head: String = s.chars().take(24).collect();
            format!("{head:?}...: {why}")
        })?;
        let public = r.to_string();
        return Ok((Box::new(r), public));
    }
    let head: String = s.chars().take(12).collect();
    Err(format!(
        "{head:?}... is not a recipient; write an age1... public key (age-keygen -y KEY) or an ssh-ed25519/ssh-rsa public key"
    ))
}

/// Client-side encryption with age (age-encryption.org/v1). With at least one recipient, every
/// stored data object is a standard age file of the zstd stream, decryptable by any one of the
/// recipients' identities.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Recipients: `age1...` (X25519) and `ssh-ed25519 ...` / `ssh-rsa ...` public keys. Env:
    /// `ETCD_LIFEBOAT_AGE_RECIPIENTS` (comma- or newline-separated).
    pub age_recipients: Vec<String>,
    /// A recipients file as `age -R` reads it (one recipient per line, `#` comments).
    pub age_recipients_file: Option<PathBuf>,
}

/// A recipient that does not parse, or a recipients file that cannot be read: `key` names the
/// config key (`encryption.age_recipients[1]`, `encryption.age_recipients_file`), `message`
/// what is wrong and what to do. `Config::validate` reports it as a config error (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct RecipientError {
    /// The config key.
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl RecipientError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        RecipientError {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Recipients {
    /// The recipients of `cfg` (list, env and file), or `None` when none is configured
    /// (backups are then stored unencrypted).
    ///
    /// Errors: [`RecipientError`] naming `encryption.age_recipients[i]`, or
    /// `encryption.age_recipients_file` (line N) for a bad recipient or unreadable file.
    pub fn from_config(cfg: &EncryptionConfig) -> Result<Option<Recipients>, RecipientError> {
        let mut keys = Vec::new();
        let mut public = Vec::new();
        for (i, s) in cfg.age_recipients.iter().enumerate() {
            let (k, p) = parse_recipient(s)
                .map_err(|m| RecipientError::new(format!("encryption.age_recipients[{i}]"), m))?;
            keys.push(k);
            public.push(p);
        }
        if let Some(path) = &cfg.age_recipients_file {
            let key = "encryption.age_recipients_file";
            let text = read_small(path).map_err(|e| {
                RecipientError::new(
                    key,
                    format!(
                        "{}: {e}; point it at a readable recipients file",
                        path.display()
                    ),
                )
            })?;
            let text = String::from_utf8(text).map_err(|_| {
                RecipientError::new(key, format!("{} is not UTF-8 text", path.display()))
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (k, p) = parse_recipient(line).map_err(|m| {
                    RecipientError::new(key, format!("{} line {}: {m}", path.display(), n + 1))
                })?;
                keys.push(k);
                public.push(p);
            }
            if keys.is_empty() {
                return Err(RecipientError::new(
                    key,
                    format!("{} holds no recipient", path.display()),
                ));
            }
        }
        if keys.is_empty() {
            return Ok(None);
        }
        // age refuses to mix recipient types that cannot go together; check it here so that
        // the config check reports it, not the first backup.
        let check = age::Encryptor::with_recipients(keys.iter().map(|k| k.as_ref() as _));
        if let Err(e) = check {
            return Err(RecipientError::new(
                "encryption.age_recipients",
                format!("these recipients cannot be used together: {e}"),
            ));
        }
        Ok(Some(Recipients { keys, public }))
    }

    /// Public strings of the recipients (`age1...`, `ssh-ed25519 AAAA...`), for the manifest.
    pub fn public(&self) -> &[String] {
        &self.public
    }

    /// A new age encryptor for one file (a fresh file key wrapped to every recipient);
    /// [`age::Encryptor::wrap_output`] writes the header and returns the stream writer.
    ///
    /// Errors: age refuses the recipient set (checked at config validation already).
    pub fn encryptor(&self) -> std::io::Result<age::Encryptor> {
        age::Encryptor::with_recipients(self.keys.iter().map(|k| k.as_ref() as _))
            .map_err(|e| std::io::Error::other(format!("age: {e}")))
    }

    /// Starts an age v1 file on `out`: writes the header, returns the stream encryptor
    /// (64 KiB chunks, ChaCha20-Poly1305). Call [`age::stream::StreamWriter::finish`] at the
    /// end, else the file is truncated.
    ///
    /// Errors: writing the header to `out`.
    pub fn encrypt<W: Write>(&self, out: W) -> std::io::Result<age::stream::StreamWriter<W>> {
        self.encryptor()?.wrap_output(out)
    }
}

/// The last stage of a stored object: `W` itself, or age's stream encryptor in front of it
/// (backups and PITR deltas both end here).
pub enum AgeOutput<W: Write> {
    /// Not encrypted.
    Plain(W),
    /// age v1 stream encryption to the configured recipients.
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> AgeOutput<W> {
    /// Ends the stream (age: writes the final chunk) and returns `W`.
    ///
    /// Errors: those of `W`.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            AgeOutput::Plain(w) => Ok(w),
            AgeOutput::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for AgeOutput<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            AgeOutput::Plain(w) => w.write(data),
            AgeOutput::Age(w) => w.write(data),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            AgeOutput::Plain(w) => w.flush(),
            AgeOutput::Age(w) => w.flush(),
        }
    }
}

/// Reads a key file of at most [`MAX_KEY_FILE`] bytes.
fn read_small(path: &Path) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_KEY_FILE + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_KEY_FILE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "larger than 1 MiB: not a key file",
        ));
    }
    Ok(buf)
}

/// Supplies the passphrase of `age -p` identity files: the environment, else the terminal.
#[derive(Clone, Default)]
struct Passphrase {
    /// Set when no passphrase could be had at all (no env, no terminal).
    unavailable: Arc<AtomicBool>,
}

impl age::Callbacks for Passphrase {
    fn display_message(&self, message: &str) {
        eprintln!("{message}");
    }
    fn confirm(&self, _: &str, _: &str, _: Option<&str>) -> Option<bool> {
        None
    }
    fn request_public_string(&self, _: &str) -> Option<String> {
        None
    }
    fn request_passphrase(&self, description: &str) -> Option<SecretString> {
        if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
            return Some(SecretString::from(p));
        }
        match rpassword::prompt_password(format!("{description} ")) {
            Ok(p) => Some(SecretString::from(p)),
            Err(_) => {
                self.unavailable.store(true, Ordering::SeqCst);
                None
            }
        }
    }
}

/// Identities that decrypt backups, loaded from files.
pub struct Identities {
    keys: Vec<Box<dyn age::Identity + Send + Sync>>,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identities")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl Identities {
    /// Loads every identity of `paths` (see the module docs for the accepted files). May
    /// prompt for a passphrase on the terminal.
    ///
    /// Errors: [`CryptoError`] naming the file: unreadable, no identity in it, unsupported
    /// ssh key type, wrong or missing passphrase.
    pub fn load(paths: &[PathBuf]) -> Result<Identities, CryptoError> {
        let mut keys: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        for path in paths {
            let data = read_small(path).map_err(|source| CryptoError::IdentityRead {
                path: path.clone(),
                source,
            })?;
            let invalid = |reason: String| CryptoError::IdentityInvalid {
                path: path.clone(),
                reason,
            };
            if data.starts_with(AGE_MAGIC) || data.starts_with(AGE_ARMOR_MAGIC) {
                keys.extend(load_encrypted_identity(path, &data)?);
            } else if data.starts_with(b"-----BEGIN OPENSSH PRIVATE KEY-----")
                || data.starts_with(b"-----BEGIN RSA PRIVATE KEY-----")
            {
                let id =
                    age::ssh::Identity::from_buffer(&data[..], Some(path.display().to_string()))
                        .map_err(|e| invalid(format!("not a usable ssh private key ({e})")))?;
                match id {
                    age::ssh::Identity::Unencrypted(_) => keys.push(Box::new(id)),
                    age::ssh::Identity::Encrypted(_) => {
                        return Err(invalid(
                            "the ssh key is passphrase-protected; pass an unencrypted copy (ssh-keygen -p -N '' -f COPY) or an age identity".into(),
                        ))
                    }
                    age::ssh::Identity::Unsupported(k) => {
                        let mut why = String::new();
                        let _ = write!(why, "{}", Shown(&k));
                        return Err(invalid(format!("unsupported ssh key: {why}")));
                    }
                }
            } else {
                let file = age::IdentityFile::from_buffer(BufReader::new(&data[..]))
                    .map_err(|e| invalid(format!("{e}; expected the output of age-keygen")))?;
                let ids = file.into_identities().map_err(|e| invalid(e.to_string()))?;
                if ids.is_empty() {
                    return Err(invalid(
                        "holds no AGE-SECRET-KEY-1... line; expected the output of age-keygen"
                            .into(),
                    ));
                }
                keys.extend(ids);
            }
        }
        Ok(Identities {
            keys,
            files: paths.to_vec(),
        })
    }

    /// The files the identities came from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Opens an age file for reading with these identities.
    ///
    /// Errors: [`age::DecryptError`]: `NoMatchingKeys` when none of the identities is a
    /// recipient of the file, `InvalidHeader`/`UnknownFormat` for a damaged header, I/O.
    pub fn decrypt<R: Read>(
        &self,
        input: R,
    ) -> Result<age::stream::StreamReader<R>, age::DecryptError> {
        let d = age::Decryptor::new(input)?;
        d.decrypt(self.keys.iter().map(|k| k.as_ref() as &dyn age::Identity))
    }
}

/// Displays an unsupported-ssh-key explanation.
struct Shown<'a>(&'a age::ssh::UnsupportedKey);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.display(f, None)
    }
}

/// Decrypts an identity file written by `age -p` and returns the identities in it.
fn load_encrypted_identity(
    path: &Path,
    data: &[u8],
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, CryptoError> {
    let fail = |reason: String| CryptoError::Passphrase {
        path: path.to_path_buf(),
        reason,
    };
    let reader = age::armor::ArmoredReader::new(data);
    let dec = age::Decryptor::new_buffered(BufReader::new(reader))
        .map_err(|e| fail(format!("its age header cannot be read: {e}")))?;
    let cb = Passphrase::default();
    let enc = age::encrypted::EncryptedIdentity::new(dec, cb.clone(), Some(MAX_SCRYPT_WORK_FACTOR))
        .ok_or_else(|| {
            fail("it is encrypted to recipients, not to a passphrase; decrypt it first".into())
        })?;
    let file = enc
        .decrypt(Some(&path.display().to_string()))
        .map_err(|e| {
            if cb.unavailable.load(Ordering::SeqCst) {
                fail(format!(
                    "no passphrase was available: set {PASSPHRASE_ENV} or run on a terminal"
                ))
            } else if matches!(e, age::DecryptError::KeyDecryptionFailed) {
                fail(format!(
                    "the passphrase is wrong (from {PASSPHRASE_ENV} or the prompt)"
                ))
            } else {
                fail(format!("it cannot be decrypted: {e}"))
            }
        })?;
    let ids = file
        .into_identities()
        .map_err(|e| fail(format!("its content is not an identity file: {e}")))?;
    if ids.is_empty() {
        return Err(fail("it holds no identity".into()));
    }
    Ok(ids)
}

/// The identities of `--identity` arguments (comma-separated lists allowed, as
/// `ETCD_LIFEBOAT_AGE_IDENTITY_FILE` gives them); `None` when there are none. Blocking: may
/// prompt for a passphrase on the terminal.
///
/// Errors: as [`Identities::load`].
pub fn identities_from_args(args: &[PathBuf]) -> Result<Option<Arc<Identities>>, CryptoError> {
    let files = split_identity_args(args);
    if files.is_empty() {
        return Ok(None);
    }
    Identities::load(&files).map(|i| Some(Arc::new(i)))
}

/// The identities named by `ETCD_LIFEBOAT_AGE_IDENTITY_FILE` (for the daemon, which has no
/// `--identity` flag); `None` when unset or empty.
///
/// Errors: as [`Identities::load`].
pub fn identities_from_env() -> Result<Option<Arc<Identities>>, CryptoError> {
    match std::env::var_os(IDENTITY_ENV) {
        Some(v) => identities_from_args(&[PathBuf::from(v)]),
        None => Ok(None),
    }
}

/// Splits identity file arguments that may hold comma-separated lists (the environment
/// variable form) into paths.
pub fn split_identity_args(args: &[PathBuf]) -> Vec<PathBuf> {
    args.iter()
        .flat_map(|p| {
            p.to_string_lossy()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// What kind of file a snapshot source is, by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    /// A raw bbolt db (with or without etcd's sha256 trailer).
    Raw,
    /// A zstd stream of the db (magic `28 b5 2f fd`).
    Zstd,
    /// An age v1 file of a zstd stream (`age-encryption.org/v1\n`, or ASCII-armored).
    Age,
}

/// Detects the format of `path` by its magic bytes.
///
/// Errors: the file cannot be opened or read.
pub fn detect_format(path: &Path) -> std::io::Result<FileFormat> {
    let mut f = std::fs::File::open(path)?;
    let mut head = [0u8; 34];
    let mut n = 0;
    while n < head.len() {
        let k = f.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(format_of(&head[..n]))
}

/// Format of a file starting with `head`.
pub fn format_of(head: &[u8]) -> FileFormat {
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        FileFormat::Zstd
    } else if head.starts_with(AGE_MAGIC) || head.starts_with(AGE_ARMOR_MAGIC) {
        FileFormat::Age
    } else {
        FileFormat::Raw
    }
}

/// An age reader that accepts armored input too (wraps `R` in age's armor detector).
pub fn dearmor<R: Read>(r: R) -> age::armor::ArmoredReader<BufReader<R>> {
    age::armor::ArmoredReader::new(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn recipients_parse_and_name_the_bad_one() {
        let id = age::x25519::Identity::generate();
        let good = id.to_public().to_string();
        let cfg = EncryptionConfig {
            age_recipients: vec![good.clone(), "age1nope".into()],
            age_recipients_file: None,
        };
        let e = Recipients::from_config(&cfg).unwrap_err();
        assert_eq!(e.key, "encryption.age_recipients[1]");
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN alice@rust";
        let cfg = EncryptionConfig {
            age_recipients: vec![good.clone(), ssh.into()],
            age_recipients_file: None,
        };
        let r = Recipients::from_config(&cfg).unwrap().unwrap();
        assert_eq!(
            r.public(),
            [
                good.clone(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsKLqeplhpW+uObz5dvMgjz1OxfM/XXUB+VHtZ6isGN"
                    .to_string()
            ]
        );
        assert!(Recipients::from_config(&EncryptionConfig::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn roundtrip_and_wrong_identity() {
        let d = tempfile::tempdir().unwrap();
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let kf = d.path().join("key.txt");
        std::fs::write(
            &kf,
            format!("# created: now\n{}\n", id.to_string().expose_secret()),
        )
        .unwrap();
        let of = d.path().join("other.txt");
        std::fs::write(&of, format!("{}\n", other.to_string().expose_secret())).unwrap();
        let cfg = EncryptionConfig {
            age_recipients: vec![id.to_public().to_string()],
            age_recipients_file: None,
        };
        let r = Recipients::from_config(&cfg).unwrap().unwrap();
        let mut w = r.encrypt(Vec::new()).unwrap();
        w.write_all(b"secret payload").unwrap();
        let ct = w.finish().unwrap();
        assert!(ct.starts_with(AGE_MAGIC));
        assert_eq!(format_of(&ct), FileFormat::Age);
        let ids = Identities::load(std::slice::from_ref(&kf)).unwrap();
        let mut out = Vec::new();
        ids.decrypt(&ct[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, b"secret payload");
        let wrong = Identities::load(&[of]).unwrap();
        assert!(matches!(
            wrong.decrypt(&ct[..]),
            Err(age::DecryptError::NoMatchingKeys)
        ));
        let junk = d.path().join("junk");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = Identities::load(&[junk]).unwrap_err().to_string();
        assert!(e.contains("age-keygen"), "{e}");
    }

    #[test]
    fn split_env_list() {
        assert_eq!(
            split_identity_args(&[PathBuf::from("a, b"), PathBuf::from("c")]),
            [PathBuf::from("a"), PathBuf::from("b"), PathBuf::from("c")]
        );
    }
}
