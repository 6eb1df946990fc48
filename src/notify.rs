//! The systemd notify protocol (`sd_notify(3)`): newline-separated
//! `KEY=VALUE` datagrams to the unix socket named by `NOTIFY_SOCKET`, a path
//! or, with a leading `@`, an abstract-namespace name. Without
//! `NOTIFY_SOCKET` every call does nothing, so the node behaves the same
//! outside systemd.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where the node's state changes go (or nowhere).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// A notifier for `$NOTIFY_SOCKET`; a value that names no usable socket is
    /// logged once and ignored (the supervisor then sees no messages, and a
    /// `Type=notify` unit times out, which names the problem).
    pub fn from_env() -> Notifier {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Notifier { target: None },
            Some(v) => match Self::open(v.as_encoded_bytes()) {
                Ok(target) => Notifier { target: Some(target) },
                Err(e) => {
                    tracing::warn!("NOTIFY_SOCKET={:?}: {e}; not sending systemd notifications", v);
                    Notifier { target: None }
                }
            },
        }
    }

    fn open(name: &[u8]) -> std::io::Result<(UnixDatagram, SocketAddr)> {
        let addr = match name {
            [b'@', rest @ ..] if !rest.is_empty() => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(rest)?
            }
            [b'/', ..] => {
                use std::os::unix::ffi::OsStrExt;
                SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(name))?
            }
            _ => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "expected an absolute socket path or @abstract-name")),
        };
        Ok((UnixDatagram::unbound()?, addr))
    }

    /// Whether messages go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one datagram of `lines` (each `KEY=VALUE`). Failures are logged:
    /// the node keeps running whatever its supervisor's socket does.
    pub fn send(&self, lines: &[&str]) {
        let Some((sock, addr)) = &self.target else { return };
        let msg: String = lines.iter().map(|l| format!("{l}\n")).collect();
        if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
            tracing::warn!("systemd notification {:?} failed: {e}", lines.first().unwrap_or(&""));
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&["READY=1", &status_line(status)]);
    }

    /// `RELOADING=1` with `MONOTONIC_USEC` (as `Type=notify-reload` requires)
    /// and a status line; follow it with [`Notifier::ready`].
    pub fn reloading(&self, status: &str) {
        let usec = format!("MONOTONIC_USEC={}", monotonic_usec());
        self.send(&["RELOADING=1", &usec, &status_line(status)]);
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&["STOPPING=1", &status_line(status)]);
    }

    /// A `STATUS=` line alone (boot phases, degraded state).
    pub fn status(&self, status: &str) {
        self.send(&[&status_line(status)]);
    }
}

/// `STATUS=<one line>`: newlines would start new assignments.
fn status_line(status: &str) -> String {
    format!("STATUS={}", status.replace(['\n', '\r'], " "))
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares reloads with.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_empty_names_are_refused() {
        assert!(Notifier::open(b"relative/sock").is_err());
        assert!(Notifier::open(b"@").is_err());
        assert!(Notifier::open(b"").is_err());
    }

    #[test]
    fn status_is_one_line() {
        assert_eq!(status_line("a\nb"), "STATUS=a b");
    }
}
