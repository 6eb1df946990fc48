//! Section "calls" of `cargo xtask bench` (issue 14, second round): HTTP calls
//! to one service with `--conns` keep-alive connections, on one node that
//! hosts the kv-store test package (a trivial function) and the default
//! distros' `aqua-ipfs` (whose getter reads a small file under `/data`).
//!
//! Three loads run interleaved on the same node, `reps` times each:
//! `GET /health` (the HTTP stack, no guest), `kv-store.version` (returns a
//! constant) and `aqua-ipfs.get-local-api-multiaddr` (opens, stats and reads
//! one small file). Rows: the trivial call's calls/s and p99 against
//! `/health`'s, and the file-reading call's calls/s against the trivial
//! call's. In process (`suite concurrent`), without HTTP: `--conns` tasks
//! calling one service at once, next to the same tasks each calling a
//! service of its own.

use super::{http, median, Node, Suite};
use anyhow::Context;
use std::path::Path;
use std::time::Duration;

pub(super) fn run(s: &mut Suite) -> anyhow::Result<()> {
    let reps = s.opts.reps.clamp(1, 3);
    let conns = s.opts.conns;
    eprintln!("[calls] trivial and file-reading calls vs GET /health on one node, {conns} connections, {reps} interleaved runs each");
    let distros = s.work.join("calls-distros");
    std::fs::create_dir_all(&distros)?;
    link_package(&s.repo.join("tests/distros/v1/kv-store"), &distros.join("kv-store"))?;
    link_package(&s.repo.join("distros/aqua-ipfs"), &distros.join("aqua-ipfs"))?;
    let state = s.work.join("calls-state");
    super::timed(s.node(&state, Some(&distros)).args(["run", "--once"]), &s.work)?;
    let port = s.port();
    let node = Node::start(s, &state, Some(&distros), port)?;
    let token = std::fs::read_to_string(state.join("api.token"))?.trim().to_string();
    let dur = Duration::from_secs(s.opts.http_secs);
    let (mut health, mut trivial, mut file) = (vec![], vec![], vec![]);
    for _ in 0..reps {
        health.push(http::load(port, &token, "/health", None, conns, dur)?);
        trivial.push(http::load(port, &token, "/v1/services/kv-store/call/version", Some("[]"), conns, dur)?);
        file.push(http::load(port, &token, "/v1/services/aqua-ipfs/call/get-local-api-multiaddr", Some("[]"), conns, dur)?);
    }
    node.stop()?;
    let rate = |v: &[http::Load]| v.iter().map(http::Load::rate).collect::<Vec<f64>>();
    let pct = |v: &[http::Load], q: f64| v.iter().map(|l| l.pct(q)).collect::<Vec<f64>>();
    s.notes.insert(
        "calls".into(),
        serde_json::json!({
            "health": health.iter().map(http::Load::json).collect::<Vec<_>>(),
            "trivial": trivial.iter().map(http::Load::json).collect::<Vec<_>>(),
            "file": file.iter().map(http::Load::json).collect::<Vec<_>>(),
        }),
    );
    let (health_rate, trivial_rate) = (median(&rate(&health)), median(&rate(&trivial)));
    s.row("calls", format!("trivial call (kv-store.version), {conns} connections to one service: calls/s"), "calls/s", rate(&trivial))
        .vs("GET /health calls/s, same node and client", health_rate)
        .at_least(20_000.0);
    s.row("calls", "  same, p50 latency", "ms", pct(&trivial, 0.50)).vs("GET /health p50", median(&pct(&health, 0.50)));
    s.row("calls", "  same, p99 latency", "ms", pct(&trivial, 0.99)).vs("GET /health p99", median(&pct(&health, 0.99))).at_most(1.5);
    s.row("calls", "file-reading call (aqua-ipfs.get-local-api-multiaddr): calls/s", "calls/s", rate(&file))
        .vs("trivial call calls/s, same node", trivial_rate)
        .ratio_at_least(0.5);
    s.row("calls", "  same, p50 latency", "ms", pct(&file, 0.50)).vs("trivial call p50", median(&pct(&trivial, 0.50)));
    s.row("calls", "  same, p99 latency", "ms", pct(&file, 0.99)).vs("trivial call p99", median(&pct(&trivial, 0.99)));
    s.row("calls", "baseline: GET /health calls/s", "calls/s", rate(&health)).higher_is_better();
    s.row("calls", "baseline: GET /health p99", "ms", pct(&health, 0.99));

    eprintln!("[calls] in process: {conns} tasks calling one service vs each its own service, {reps} runs");
    let (mut one, mut own, mut one_p99, mut own_p99) = (vec![], vec![], vec![], vec![]);
    for _ in 0..reps {
        let r = super::json_of(&super::timed(s.suite().args(["concurrent", &conns.to_string(), "5000"]), &s.work)?)?;
        one.push(r["one_service"]["per_second"].as_f64().unwrap_or(f64::NAN));
        own.push(r["own_services"]["per_second"].as_f64().unwrap_or(f64::NAN));
        one_p99.push(r["one_service"]["p99_us"].as_f64().unwrap_or(f64::NAN));
        own_p99.push(r["own_services"]["p99_us"].as_f64().unwrap_or(f64::NAN));
    }
    let (own_med, own_p99_med) = (median(&own), median(&own_p99));
    s.row("calls", format!("in process: {conns} tasks calling one service (Runtime::call echo-entry): calls/s"), "calls/s", one)
        .vs(format!("{conns} tasks, each calling its own service"), own_med)
        .higher_is_better();
    s.row("calls", "  same, p99 latency", "µs", one_p99).vs("each its own service, p99", own_p99_med);
    Ok(())
}

/// `dst` becomes a package folder whose entries link to `src`'s.
fn link_package(src: &Path, dst: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dst)?;
    for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let e = e?;
        let to = dst.join(e.file_name());
        if !to.exists() {
            std::os::unix::fs::symlink(e.path(), &to).with_context(|| format!("linking {}", to.display()))?;
        }
    }
    Ok(())
}

impl super::Row {
    /// Target on the ratio to the baseline, higher being better: `ratio >= min`.
    fn ratio_at_least(&mut self, min: f64) -> &mut Self {
        self.target = format!("ratio >= {min}");
        self.ok = self.ratio().map(|r| r >= min);
        self.lower_is_better = false;
        self
    }
}
