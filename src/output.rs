//! Report lines on stdout for the CLI commands. A reader that stopped early (`list | head`)
//! is not a failure of the command: the rest is dropped quietly, as Unix tools do, and the
//! exit code still says how the work went (`println!` panics there and exits 101).

use std::io::Write;

/// Writes `s` to stdout in one piece; a closed pipe (`EPIPE`) drops it quietly.
///
/// Panics, like `println!`, on any other write error (e.g. stdout redirected to a full disk).
pub fn print(s: &str) {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(s.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            panic!("failed printing to stdout: {e}")
        }
        _ => {}
    }
}

/// `println!` through [`print`]: `outln!("{} keys", n)`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::print(&format!("{}\n", format_args!($($arg)*)))
    };
}
