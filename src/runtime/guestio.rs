//! What a guest says reaches the node's log, within limits: the host `log`
//! import and the guest's stdout/stderr (line-buffered) go through one
//! [`GuestLog`] per service, which escapes control characters, caps the line
//! length and rate-limits lines with a token bucket; dropped lines are counted
//! and reported in one summary line once lines flow again.

use crate::ids::ServiceId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Log limits of one service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Lines per second a service may log on average; also the burst size.
    pub lines_per_sec: u32,
    /// Longer lines are cut (on a character boundary) and marked `…[cut N bytes]`.
    pub line_max_bytes: u32,
}

/// The level of a guest line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a line came from (a field of the log event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GuestSource {
    /// The `sysdeploy:host/node.log` import.
    Log,
    Stdout,
    Stderr,
}

impl GuestSource {
    fn as_str(self) -> &'static str {
        match self {
            GuestSource::Log => "log",
            GuestSource::Stdout => "stdout",
            GuestSource::Stderr => "stderr",
        }
    }
}

struct Bucket {
    tokens: f64,
    last: Instant,
    /// Lines dropped since the last summary line.
    dropped_unreported: u64,
}

/// The log of one service: shared by its instances' `log` import and
/// stdout/stderr streams.
pub(crate) struct GuestLog {
    service: ServiceId,
    limits: LogLimits,
    bucket: Mutex<Bucket>,
    /// Lines dropped by the rate limit since the service was loaded.
    dropped: AtomicU64,
}

impl GuestLog {
    pub(crate) fn new(service: ServiceId, limits: LogLimits) -> Self {
        let burst = f64::from(limits.lines_per_sec.max(1));
        GuestLog {
            service,
            limits,
            bucket: Mutex::new(Bucket { tokens: burst, last: Instant::now(), dropped_unreported: 0 }),
            dropped: AtomicU64::new(0),
        }
    }

    pub(crate) fn service(&self) -> &str {
        self.service.as_str()
    }

    /// Lines dropped by the rate limit so far.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Takes a token; `Some(n)` when the line may be emitted, `n` being the
    /// lines dropped since the last emitted one (to report first).
    fn admit(&self) -> Option<u64> {
        let rate = f64::from(self.limits.lines_per_sec.max(1));
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Some(std::mem::take(&mut b.dropped_unreported))
        } else {
            b.dropped_unreported += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Emits one line (already split at newlines by the caller, or a whole
    /// `log` message whose newlines get escaped).
    pub(crate) fn line(&self, level: GuestLevel, source: GuestSource, text: &str) {
        let Some(dropped_before) = self.admit() else { return };
        let service = self.service.as_str();
        if dropped_before > 0 {
            tracing::warn!(target: "guest", service, dropped = dropped_before, "guest log rate limit: {dropped_before} line(s) dropped");
        }
        let message = escape(text, self.limits.line_max_bytes as usize);
        let source = source.as_str();
        match level {
            GuestLevel::Trace => tracing::trace!(target: "guest", service, source, "{message}"),
            GuestLevel::Debug => tracing::debug!(target: "guest", service, source, "{message}"),
            GuestLevel::Info => tracing::info!(target: "guest", service, source, "{message}"),
            GuestLevel::Warn => tracing::warn!(target: "guest", service, source, "{message}"),
            GuestLevel::Error => tracing::error!(target: "guest", service, source, "{message}"),
        }
    }
}

/// `text` with every control character escaped (`\n`, `\r`, `\t`, `\\`, and
/// `\u{..}` for the rest, ESC included), so a guest cannot start a line of its
/// own or drive a terminal; cut to `max` bytes of input, marked.
pub fn escape(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = String::with_capacity(cut + 16);
    for c in text[..cut].chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if cut < text.len() {
        out.push_str(&format!("…[cut {} bytes]", text.len() - cut));
    }
    out
}

/// Bytes a line buffer holds before it is flushed as a line of its own.
fn buffer_cap(limits: &LogLimits) -> usize {
    (limits.line_max_bytes as usize).max(1)
}

/// A guest's stdout or stderr: bytes are split into lines, each line goes to
/// the service's [`GuestLog`]. A line longer than the line cap is emitted in
/// pieces of at most the cap (the rate limit counts each piece), so the
/// buffer never grows past the cap. An unterminated last line is emitted when
/// the stream is dropped.
pub(crate) struct GuestOutput {
    log: Arc<GuestLog>,
    source: GuestSource,
    shared: Arc<Mutex<Vec<u8>>>,
}

impl GuestOutput {
    pub(crate) fn new(log: Arc<GuestLog>, source: GuestSource) -> Self {
        GuestOutput { log, source, shared: Arc::default() }
    }

    fn level(&self) -> GuestLevel {
        match self.source {
            GuestSource::Stderr => GuestLevel::Warn,
            _ => GuestLevel::Info,
        }
    }

    fn stream(&self) -> LineStream {
        LineStream { log: self.log.clone(), source: self.source, level: self.level(), buf: self.shared.clone() }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.stream())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.stream())
    }
}

/// One handle on a guest output; all handles of one output share the buffer.
struct LineStream {
    log: Arc<GuestLog>,
    source: GuestSource,
    level: GuestLevel,
    buf: Arc<Mutex<Vec<u8>>>,
}

impl LineStream {
    fn feed(&self, bytes: &[u8]) {
        let cap = buffer_cap(&self.log.limits);
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (body, newline) = match chunk.strip_suffix(b"\n") {
                Some(b) => (b, true),
                None => (chunk, false),
            };
            let mut body = body;
            while buf.len() + body.len() > cap {
                let take = cap - buf.len();
                buf.extend_from_slice(&body[..take]);
                body = &body[take..];
                self.emit(&mut buf);
            }
            buf.extend_from_slice(body);
            if newline {
                self.emit(&mut buf);
            }
        }
    }

    fn emit(&self, buf: &mut Vec<u8>) {
        let line = String::from_utf8_lossy(buf);
        let line = line.strip_suffix('\r').unwrap_or(&line);
        self.log.line(self.level, self.source, line);
        buf.clear();
    }
}

impl Drop for LineStream {
    fn drop(&mut self) {
        // The last handle flushes an unterminated line.
        if Arc::strong_count(&self.buf) <= 2 {
            let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
            if !buf.is_empty() {
                self.emit(&mut buf);
            }
        }
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for LineStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.feed(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LineStream {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineStream {
    fn poll_write(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        self.feed(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_control_characters_and_cuts_long_lines() {
        assert_eq!(escape("a\nERROR sysdeploy::node: x\r\x1b[31m\t\\", 100), "a\\nERROR sysdeploy::node: x\\r\\u{1b}[31m\\t\\\\");
        assert_eq!(escape("héllo", 2), "h…[cut 5 bytes]");
        assert_eq!(escape("plain", 5), "plain");
    }

    #[test]
    fn the_bucket_admits_a_burst_then_counts_drops() {
        let log = GuestLog::new(ServiceId::random(), LogLimits { lines_per_sec: 3, line_max_bytes: 10 });
        let admitted = (0..100).filter(|_| log.admit().is_some()).count();
        // 3 in the burst, plus what refilled while the loop ran.
        assert!((3..100).contains(&admitted), "{admitted}");
        assert_eq!(log.dropped(), 100 - admitted as u64);
    }
}
