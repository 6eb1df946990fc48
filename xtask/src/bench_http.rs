//! A small HTTP/1.1 keep-alive load client for `cargo xtask bench`: one
//! blocking connection per thread, a fixed pre-built request, responses
//! framed by `Content-Length`. Kept minimal so the client costs the shared
//! 2-core machine as little CPU as possible (and needs no dependency).

use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Result of one load run.
pub struct Load {
    /// Latency of every timed request, in ms, sorted.
    latencies_ms: Vec<f64>,
    elapsed: Duration,
    conns: usize,
    path: String,
}

impl Load {
    /// Requests per second over the timed window.
    pub fn rate(&self) -> f64 {
        self.latencies_ms.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency percentile in ms (`q` in 0..=1).
    pub fn pct(&self, q: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_ms.len() as f64 - 1.0) * q).round() as usize;
        self.latencies_ms[i]
    }

    pub fn json(&self) -> Value {
        json!({
            "path": self.path, "connections": self.conns, "requests": self.latencies_ms.len(),
            "seconds": self.elapsed.as_secs_f64(), "per_second": self.rate(),
            "p50_ms": self.pct(0.5), "p90_ms": self.pct(0.9), "p99_ms": self.pct(0.99), "max_ms": self.pct(1.0),
        })
    }
}

/// One keep-alive connection.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Sends `req` and reads one response; returns its status.
    fn roundtrip(&mut self, req: &[u8]) -> anyhow::Result<u16> {
        self.writer.write_all(req)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).context("malformed status line")?.parse().context("status code")?;
        let mut len = None;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(v.trim().parse::<usize>()?);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked responses are not supported by the bench client");
                }
            }
        }
        let mut body = vec![0; len.unwrap_or(0)];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

fn request(method: &str, path: &str, token: &str, body: Option<&str>) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n");
    if let Some(b) = body {
        r.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()));
    } else {
        r.push_str("\r\n");
    }
    r.into_bytes()
}

/// Status of one `GET path` on a fresh connection (for readiness polling).
pub fn status(port: u16, path: &str) -> anyhow::Result<u16> {
    let mut c = Conn::open(port)?;
    c.roundtrip(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes())
}

/// Runs `conns` keep-alive connections against `path` for `dur` (after a
/// short warm-up); POST with `body` when given, else GET. Every response
/// must be 200.
pub fn load(port: u16, token: &str, path: &str, body: Option<&str>, conns: usize, dur: Duration) -> anyhow::Result<Load> {
    let req = Arc::new(request(if body.is_some() { "POST" } else { "GET" }, path, token, body));
    let start = Arc::new(Barrier::new(conns + 1));
    let mut threads = Vec::new();
    for _ in 0..conns {
        let (req, start) = (req.clone(), start.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
            let mut c = Conn::open(port)?;
            let mut warm_err = None;
            for _ in 0..50 {
                match c.roundtrip(&req) {
                    Ok(200) => {}
                    Ok(s) => warm_err = Some(format!("status {s}")),
                    Err(e) => warm_err = Some(e.to_string()),
                }
            }
            start.wait();
            if let Some(e) = warm_err {
                bail!("warm-up request failed: {e}");
            }
            let deadline = Instant::now() + dur;
            let mut lat = Vec::with_capacity(100_000);
            while Instant::now() < deadline {
                let t = Instant::now();
                let s = c.roundtrip(&req)?;
                lat.push(t.elapsed().as_secs_f64() * 1e3);
                if s != 200 {
                    bail!("status {s}");
                }
            }
            Ok(lat)
        }));
    }
    start.wait();
    let t = Instant::now();
    let mut all = Vec::new();
    for th in threads {
        all.extend(th.join().map_err(|_| anyhow::anyhow!("load thread panicked"))?.with_context(|| format!("load on {path}"))?);
    }
    let elapsed = t.elapsed();
    all.sort_by(f64::total_cmp);
    Ok(Load { latencies_ms: all, elapsed, conns, path: path.to_string() })
}
