//! The node's Prometheus metrics: one shared registry that the deployer, the
//! runtime, the spell scheduler and the API record into, rendered by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// Labels of per-alias series (calls, spell runs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AliasLabels {
    alias: String,
}

/// Labels of failed-call series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallErrorLabels {
    alias: String,
    /// The stable error code the API answers with (`trap`, `timeout`, ...).
    code: String,
}

/// Labels of one-label series (`status`, `outcome`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// Labels of `sysdeploy_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// Labels of `sysdeploy_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    wasmtime: String,
}

/// Labels of deployment step series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    /// Step action as the plan names it (`install`, `replace`, `remove-spell`, ...);
    /// `keep` steps change nothing and are not counted.
    action: String,
    /// `ok`, `failed`, `skipped`, ...: whatever the executor reports.
    outcome: String,
}

type HistogramCtor = fn() -> Histogram;

/// Guest calls: 100 µs doubling up to ~13 s; slower calls land in `+Inf`.
fn call_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// Deployment steps: 1 ms doubling up to ~131 s (cold compiles are slow).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The handles behind [`Metrics`]; each family is itself shared, the registry
/// only reads them when rendering.
struct Inner {
    /// Frozen after construction: every series is registered up front so
    /// `render` never needs a write lock and scrapes never block recording.
    registry: Registry,
    step_duration: Family<StepLabels, Histogram, HistogramCtor>,
    steps: Family<StepLabels, Counter>,
    services_deployed: Gauge,
    spells_deployed: Gauge,
    calls: Family<AliasLabels, Counter>,
    call_errors: Family<CallErrorLabels, Counter>,
    call_duration: Family<AliasLabels, Histogram, HistogramCtor>,
    spell_runs: Family<AliasLabels, Counter>,
    spell_errors: Family<AliasLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    guest_data_bytes: Family<AliasLabels, Gauge>,
    guest_data_inodes: Family<AliasLabels, Gauge>,
    guest_open_files: Family<AliasLabels, Gauge>,
    guest_log_dropped: Family<AliasLabels, Counter>,
    health: Family<StatusLabels, Gauge>,
    ready: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    snapshots: Family<OutcomeLabels, Counter>,
    snapshot_bytes: Gauge,
    snapshot_duration: Histogram,
    process: ProcessMetrics,
    /// Serialises the read-modify-write of the process series at render.
    process_update: Mutex<()>,
}

/// The conventional `process_*` series (no `sysdeploy_` prefix, so standard
/// dashboards and alerts find them), refreshed from `/proc` at each scrape.
struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_memory_bytes: Gauge,
    open_fds: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
}

/// What a metrics scrape gets, chosen from its `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The classic Prometheus text format `text/plain; version=0.0.4`: the
    /// default, and what `promtool check metrics` and classic parsers read.
    Classic,
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    /// The `Content-Type` of a rendering in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => CLASSIC_CONTENT_TYPE,
            Format::OpenMetrics => CONTENT_TYPE,
        }
    }

    /// OpenMetrics when `accept` lists `application/openmetrics-text` with a
    /// quality at least that of every `text/plain` entry; classic otherwise
    /// (no header, `*/*`, `text/plain`, anything unknown).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Classic };
        let (mut om, mut classic) = (None::<f32>, None::<f32>);
        for entry in accept.split(',') {
            let mut parts = entry.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let slot = match media.as_str() {
                "application/openmetrics-text" => &mut om,
                "text/plain" => &mut classic,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
        match om {
            Some(q) if q > 0.0 && q >= classic.unwrap_or(0.0) => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }
}

/// Shared metrics registry. Cheap to clone; every clone records into the same
/// series.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry with every series of the node registered (all prefixed `sysdeploy_`).
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = ProcessMetrics {
            cpu_seconds: Counter::default(),
            resident_memory_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            start_time_seconds: Gauge::default(),
        };
        root.register("process_cpu_seconds", "Total user and system CPU time spent in seconds", process.cpu_seconds.clone());
        root.register("process_resident_memory_bytes", "Resident memory size in bytes", process.resident_memory_bytes.clone());
        root.register("process_open_fds", "Number of open file descriptors", process.open_fds.clone());
        root.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            process.start_time_seconds.clone(),
        );
        process.start_time_seconds.set(process_start_time().unwrap_or_else(now_seconds));
        let registry = root.sub_registry_with_prefix("sysdeploy");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").into(), wasmtime: WASMTIME_VERSION.into() }).set(1);
        registry.register("build_info", "Always 1; the labels name the running build", build_info);
        let health = Family::<StatusLabels, Gauge>::default();
        let ready = Gauge::default();
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "health_status",
            "1 for the node's current health status (ready, deploying, degraded, failed), 0 for the others",
            health.clone(),
        );
        registry.register("ready", "1 when GET /readyz answers 200 (first deployment finished, not failed)", ready.clone());
        registry.register("reloads", "Configuration reloads (SIGHUP or POST /v1/reload), by outcome", reloads.clone());
        for status in HEALTH_STATUSES {
            health.get_or_create(&StatusLabels { status: (*status).into() }).set(i64::from(*status == "deploying"));
        }
        let snapshots = Family::<OutcomeLabels, Counter>::default();
        let snapshot_bytes = Gauge::default();
        let snapshot_duration = step_histogram();
        registry.register(
            "snapshots",
            "Snapshots of the running node through the api (POST /v1/snapshots, GET /v1/snapshot), by outcome: ok, failed, aborted (client went away)",
            snapshots.clone(),
        );
        registry.register("snapshot_bytes", "Size of the last snapshot archive sent, in bytes", snapshot_bytes.clone());
        registry.register(
            "snapshot_duration_seconds",
            "Duration of snapshots of the running node, staging and streaming",
            snapshot_duration.clone(),
        );
        for outcome in SNAPSHOT_OUTCOMES {
            let _ = snapshots.get_or_create(&OutcomeLabels { outcome: (*outcome).into() });
        }
        for outcome in RELOAD_OUTCOMES {
            let _ = reloads.get_or_create(&OutcomeLabels { outcome: (*outcome).into() });
        }
        let step_duration = Family::<StepLabels, Histogram, HistogramCtor>::new_with_constructor(step_histogram);
        let steps = Family::<StepLabels, Counter>::default();
        let services_deployed = Gauge::default();
        let spells_deployed = Gauge::default();
        let calls = Family::<AliasLabels, Counter>::default();
        let call_errors = Family::<CallErrorLabels, Counter>::default();
        let call_duration = Family::<AliasLabels, Histogram, HistogramCtor>::new_with_constructor(call_histogram);
        let spell_runs = Family::<AliasLabels, Counter>::default();
        let spell_errors = Family::<AliasLabels, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let guest_data_bytes = Family::<AliasLabels, Gauge>::default();
        let guest_data_inodes = Family::<AliasLabels, Gauge>::default();
        let guest_open_files = Family::<AliasLabels, Gauge>::default();
        let guest_log_dropped = Family::<AliasLabels, Counter>::default();

        registry.register(
            "deploy_step_duration_seconds",
            "Duration of deployment steps that changed something, by action and outcome",
            step_duration.clone(),
        );
        registry.register(
            "deploy_steps",
            "Deployment steps that changed something (keep is not counted), by action and outcome",
            steps.clone(),
        );
        registry.register("services_deployed", "Services currently deployed", services_deployed.clone());
        registry.register("spells_deployed", "Spells currently deployed", spells_deployed.clone());
        registry.register("calls", "Service function calls through the API, by alias", calls.clone());
        registry.register("call_errors", "Service function calls that failed, by alias and error code", call_errors.clone());
        registry.register("call_duration_seconds", "Latency of service function calls through the API, by alias", call_duration.clone());
        registry.register("spell_runs", "Spell script runs, by spell alias", spell_runs.clone());
        registry.register("spell_errors", "Spell script runs that failed, by spell alias", spell_errors.clone());
        registry.register("precompiled_cache_hits", "Components loaded from the precompiled-artifact cache", cache_hits.clone());
        registry.register(
            "precompiled_cache_misses",
            "Components that had to be compiled because no valid precompiled artifact existed",
            cache_misses.clone(),
        );
        registry.register(
            "guest_data_bytes",
            "Bytes under a service's /data, as its quota counts them, by alias",
            guest_data_bytes.clone(),
        );
        registry.register(
            "guest_data_inodes",
            "Entries under a service's /data, as its quota counts them, by alias",
            guest_data_inodes.clone(),
        );
        registry.register("guest_open_files", "Descriptors a service's instance holds, by alias", guest_open_files.clone());
        registry.register("guest_log_lines_dropped", "Guest log lines dropped by the rate limit, by alias", guest_log_dropped.clone());

        Metrics {
            inner: Arc::new(Inner {
                registry: root,
                step_duration,
                steps,
                services_deployed,
                spells_deployed,
                calls,
                call_errors,
                call_duration,
                spell_runs,
                spell_errors,
                cache_hits,
                cache_misses,
                guest_data_bytes,
                guest_data_inodes,
                guest_open_files,
                guest_log_dropped,
                health,
                ready,
                reloads,
                snapshots,
                snapshot_bytes,
                snapshot_duration,
                process,
                process_update: Mutex::new(()),
            }),
        }
    }

    /// Records one service call: its latency, and its error code when it failed.
    pub fn observe_call(&self, alias: &str, dur: Duration, error: Option<&str>) {
        let labels = AliasLabels { alias: alias.to_string() };
        let before = self.inner.calls.get_or_create(&labels).inc();
        if before == 0 {
            // Create every error series at 0 with the first call, so error
            // ratios and `increase()` exist before the first error.
            for code in super::error::CALL_ERROR_CODES {
                let _ = self.inner.call_errors.get_or_create(&CallErrorLabels { alias: alias.to_string(), code: (*code).into() });
            }
        }
        if let Some(code) = error {
            self.inner.call_errors.get_or_create(&CallErrorLabels { alias: alias.to_string(), code: code.to_string() }).inc();
        }
        self.inner.call_duration.get_or_create(&labels).observe(dur.as_secs_f64());
    }

    /// Sets the health series from the node's current health.
    pub fn set_health(&self, health: &super::Health) {
        let current = health.status();
        for status in HEALTH_STATUSES {
            self.inner.health.get_or_create(&StatusLabels { status: (*status).into() }).set(i64::from(*status == current));
        }
        self.inner.ready.set(i64::from(health.is_ready()));
    }

    /// Counts one reload with its outcome: `ok`, `degraded`, `failed` or
    /// `refused` (the new config was invalid; nothing changed).
    pub fn reload(&self, outcome: &str) {
        self.inner.reloads.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
    }

    /// Records one snapshot of the running node: `ok` (then `bytes` is the
    /// archive's size), `failed` or `aborted` (the client went away).
    pub fn snapshot(&self, outcome: &str, bytes: u64, dur: Duration) {
        self.inner.snapshots.get_or_create(&OutcomeLabels { outcome: outcome.to_string() }).inc();
        if outcome == "ok" {
            self.inner.snapshot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.inner.snapshot_duration.observe(dur.as_secs_f64());
    }

    /// Records one deployment step of `action` with its `outcome`; `keep`
    /// steps (nothing to do) are not counted, so the rate shows real changes.
    pub fn observe_step(&self, action: &str, dur: Duration, outcome: &str) {
        if action == "keep" || action == "keep-spell" {
            return;
        }
        let labels = StepLabels { action: action.to_string(), outcome: outcome.to_string() };
        self.inner.steps.get_or_create(&labels).inc();
        self.inner.step_duration.get_or_create(&labels).observe(dur.as_secs_f64());
    }

    /// Sets how many services and spells are deployed now.
    pub fn set_deployed(&self, services: usize, spells: usize) {
        self.inner.services_deployed.set(i64::try_from(services).unwrap_or(i64::MAX));
        self.inner.spells_deployed.set(i64::try_from(spells).unwrap_or(i64::MAX));
    }

    /// Records one spell run, and an error when `!ok`.
    pub fn spell_run(&self, alias: &str, ok: bool) {
        let labels = AliasLabels { alias: alias.to_string() };
        self.inner.spell_runs.get_or_create(&labels).inc();
        let errors = self.inner.spell_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
    }

    /// Adds precompiled-cache hits and misses (increments, not totals).
    pub fn cache(&self, hits: u64, misses: u64) {
        self.inner.cache_hits.inc_by(hits);
        self.inner.cache_misses.inc_by(misses);
    }

    /// Records what a service's guest takes now (after a call to it).
    pub fn guest_usage(&self, alias: &str, usage: &crate::runtime::GuestUsage) {
        let labels = AliasLabels { alias: alias.to_string() };
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.inner.guest_data_bytes.get_or_create(&labels).set(gauge(usage.data.bytes));
        self.inner.guest_data_inodes.get_or_create(&labels).set(gauge(usage.data.inodes));
        self.inner.guest_open_files.get_or_create(&labels).set(gauge(usage.open_files));
        let dropped = self.inner.guest_log_dropped.get_or_create(&labels);
        let seen = dropped.get();
        if usage.log_lines_dropped > seen {
            dropped.inc_by(usage.log_lines_dropped - seen);
        }
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// The registry in `format`, with the process series refreshed first.
    pub fn render_as(&self, format: Format) -> String {
        self.refresh_process();
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only propagates fmt errors.
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).expect("encoding metrics into a String cannot fail");
        match format {
            Format::OpenMetrics => out,
            Format::Classic => to_classic(&out),
        }
    }

    fn refresh_process(&self) {
        let _one = self.inner.process_update.lock().unwrap_or_else(|p| p.into_inner());
        let p = &self.inner.process;
        if let Some(cpu) = cpu_seconds() {
            let seen = p.cpu_seconds.get();
            if cpu > seen {
                p.cpu_seconds.inc_by(cpu - seen);
            }
        }
        if let Some(rss) = resident_bytes() {
            p.resident_memory_bytes.set(i64::try_from(rss).unwrap_or(i64::MAX));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The directory handle itself is one of the entries.
            p.open_fds.set(i64::try_from(dir.count().saturating_sub(1)).unwrap_or(i64::MAX));
        }
    }
}

/// Every status `sysdeploy_health_status` has a series for.
const HEALTH_STATUSES: &[&str] = &["ready", "deploying", "degraded", "failed"];
/// Every outcome `sysdeploy_reloads_total` has a series for from the start.
const RELOAD_OUTCOMES: &[&str] = &["ok", "degraded", "failed", "refused"];
/// Outcomes of `sysdeploy_snapshots_total`, created at 0 so rates exist before the first.
const SNAPSHOT_OUTCOMES: &[&str] = &["ok", "failed", "aborted"];
/// The wasmtime the binary embeds (its major version is the API version).
const WASMTIME_VERSION: &str = "48.0.8";

/// OpenMetrics text → classic Prometheus text: counter families are named
/// with their `_total` suffix in `# HELP`/`# TYPE` (classic parsers match
/// help to samples by name), `# UNIT` and `# EOF` are dropped. Gauges and
/// histograms read the same in both.
fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            }
            // Counters' `_created` samples have no classic form.
            None if line.split(['{', ' ']).next().is_some_and(|n| n.ends_with("_created")) => {}
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// User plus system CPU time of this process.
fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialised by the successful call above (and zeroed before).
    let u = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(u.ru_utime) + secs(u.ru_stime))
}

/// Resident set size from `/proc/self/statm` (pages → bytes).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// When this process started: its start in clock ticks after boot
/// (`/proc/self/stat` field 22) plus the boot time (`/proc/stat` `btime`).
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let after = &stat[stat.rfind(')')? + 1..];
    let ticks: f64 = after.split_whitespace().nth(22 - 3)?.parse().ok()?;
    let btime: f64 = std::fs::read_to_string("/proc/stat").ok()?.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| btime + ticks / hz as f64)
}

/// The `Content-Type` of an OpenMetrics rendering.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The `Content-Type` of a classic rendering.
pub const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_with_its_labels() {
        let m = Metrics::new();
        m.observe_call("registry", Duration::from_millis(3), None);
        m.observe_call("registry", Duration::from_millis(5), Some("trap"));
        m.observe_step("install", Duration::from_millis(40), "ok");
        m.set_deployed(4, 2);
        m.spell_run("registry-spell", false);
        m.cache(3, 1);
        let text = m.clone().render();
        for needle in [
            r#"sysdeploy_calls_total{alias="registry"} 2"#,
            r#"sysdeploy_call_errors_total{alias="registry",code="trap"} 1"#,
            r#"sysdeploy_call_errors_total{alias="registry",code="timeout"} 0"#,
            r#"sysdeploy_call_duration_seconds_count{alias="registry"} 2"#,
            r#"sysdeploy_deploy_steps_total{action="install",outcome="ok"} 1"#,
            r#"sysdeploy_deploy_step_duration_seconds_count{action="install",outcome="ok"} 1"#,
            "sysdeploy_services_deployed 4",
            "sysdeploy_spells_deployed 2",
            r#"sysdeploy_spell_runs_total{alias="registry-spell"} 1"#,
            r#"sysdeploy_spell_errors_total{alias="registry-spell"} 1"#,
            "sysdeploy_precompiled_cache_hits_total 3",
            "sysdeploy_precompiled_cache_misses_total 1",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn keep_steps_are_not_counted() {
        let m = Metrics::new();
        m.observe_step("keep", Duration::from_millis(1), "ok");
        m.observe_step("keep-spell", Duration::from_millis(1), "ok");
        m.observe_step("replace", Duration::from_millis(1), "ok");
        let text = m.render();
        assert!(!text.contains(r#"action="keep"#), "{text}");
        assert!(text.contains(r#"sysdeploy_deploy_steps_total{action="replace",outcome="ok"} 1"#), "{text}");
    }

    #[test]
    fn accept_picks_the_format() {
        use Format::*;
        for (accept, want) in [
            (None, Classic),
            (Some("*/*"), Classic),
            (Some("text/plain; version=0.0.4"), Classic),
            (Some("application/openmetrics-text; version=1.0.0"), OpenMetrics),
            // What Prometheus 2.x sends by default.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                OpenMetrics,
            ),
            (Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"), Classic),
            (Some("application/openmetrics-text;q=0"), Classic),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn classic_text_names_counter_families_with_total_and_has_no_eof() {
        let m = Metrics::new();
        m.observe_call("echo", Duration::from_micros(50), None);
        let text = m.render_as(Format::Classic);
        assert!(text.contains("# HELP sysdeploy_calls_total "), "{text}");
        assert!(text.contains("# TYPE sysdeploy_calls_total counter"), "{text}");
        assert!(text.contains("# TYPE process_cpu_seconds_total counter"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn error_series_exist_at_zero_after_a_success() {
        let m = Metrics::new();
        m.observe_call("echo", Duration::from_micros(50), None);
        m.spell_run("tick", true);
        let text = m.render();
        assert!(text.contains(r#"sysdeploy_call_errors_total{alias="echo",code="trap"} 0"#), "{text}");
        assert!(text.contains(r#"sysdeploy_spell_errors_total{alias="tick"} 0"#), "{text}");
    }
}
