//! TLS material for the test servers, made with the openssl CLI and named as on a kubeadm
//! node (ca.crt, server.crt/.key, healthcheck-client.crt/.key). Loaded by tests/common/mod.rs
//! and tests/common/s3.rs (`#[path = "tls.rs"] mod tls;`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// TLS files made by openssl, named as kubeadm names them.
#[derive(Clone, Debug)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    /// What a client of the server presents: [CA, client certificate, client key].
    pub fn client_files(&self) -> [&Path; 3] {
        [&self.ca, &self.client_cert, &self.client_key]
    }

    /// A CA plus a server cert (SAN 127.0.0.1, localhost) and a client cert signed by it.
    pub fn generate(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=etcd-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, cn, ext) in [
            ("server", "etcd-server", "server.ext"),
            (
                "healthcheck-client",
                "kube-etcd-healthcheck-client",
                "client.ext",
            ),
        ] {
            openssl(
                dir,
                &[
                    "req",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    "ca.crt",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.crt"),
                ],
            );
        }
        Certs {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("healthcheck-client.crt"),
            client_key: dir.join("healthcheck-client.key"),
        }
    }
}
