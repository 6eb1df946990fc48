//! The node's Prometheus metrics: one shared registry that the deployer, the
//! runtime, the spell scheduler and the API record into, rendered by `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Labels of per-alias series (calls, spell runs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AliasLabels {
    alias: String,
}

/// Labels of deployment step series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    /// Step kind as the plan names it (`install`, `replace`, `remove_spell`, ...).
    kind: String,
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
    call_errors: Family<AliasLabels, Counter>,
    call_duration: Family<AliasLabels, Histogram, HistogramCtor>,
    spell_runs: Family<AliasLabels, Counter>,
    spell_errors: Family<AliasLabels, Counter>,
    cache_hits: Counter,
    cache_misses: Counter,
    guest_data_bytes: Family<AliasLabels, Gauge>,
    guest_data_inodes: Family<AliasLabels, Gauge>,
    guest_open_files: Family<AliasLabels, Gauge>,
    guest_log_dropped: Family<AliasLabels, Counter>,
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
        let mut registry = Registry::with_prefix("sysdeploy");
        let step_duration = Family::<StepLabels, Histogram, HistogramCtor>::new_with_constructor(step_histogram);
        let steps = Family::<StepLabels, Counter>::default();
        let services_deployed = Gauge::default();
        let spells_deployed = Gauge::default();
        let calls = Family::<AliasLabels, Counter>::default();
        let call_errors = Family::<AliasLabels, Counter>::default();
        let call_duration = Family::<AliasLabels, Histogram, HistogramCtor>::new_with_constructor(call_histogram);
        let spell_runs = Family::<AliasLabels, Counter>::default();
        let spell_errors = Family::<AliasLabels, Counter>::default();
        let cache_hits = Counter::default();
        let cache_misses = Counter::default();
        let guest_data_bytes = Family::<AliasLabels, Gauge>::default();
        let guest_data_inodes = Family::<AliasLabels, Gauge>::default();
        let guest_open_files = Family::<AliasLabels, Gauge>::default();
        let guest_log_dropped = Family::<AliasLabels, Counter>::default();

        registry.register("deploy_step_duration_seconds", "Duration of deployment steps by step kind and outcome", step_duration.clone());
        registry.register("deploy_steps", "Deployment steps applied, by step kind and outcome", steps.clone());
        registry.register("services_deployed", "Services currently deployed", services_deployed.clone());
        registry.register("spells_deployed", "Spells currently deployed", spells_deployed.clone());
        registry.register("calls", "Service function calls through the API, by alias", calls.clone());
        registry.register("call_errors", "Service function calls that failed, by alias", call_errors.clone());
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
                registry,
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
            }),
        }
    }

    /// Records one service call: its latency, and an error when `!ok`.
    pub fn observe_call(&self, alias: &str, dur: Duration, ok: bool) {
        let labels = AliasLabels { alias: alias.to_string() };
        self.inner.calls.get_or_create(&labels).inc();
        // Create the error series at 0 too, so error ratios exist before the first error.
        let errors = self.inner.call_errors.get_or_create(&labels);
        if !ok {
            errors.inc();
        }
        self.inner.call_duration.get_or_create(&labels).observe(dur.as_secs_f64());
    }

    /// Records one applied deployment step of `kind` with its `outcome`.
    pub fn observe_step(&self, kind: &str, dur: Duration, outcome: &str) {
        let labels = StepLabels { kind: kind.to_string(), outcome: outcome.to_string() };
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

    /// The registry in the OpenMetrics text format (which Prometheus scrapes).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the encoder only propagates fmt errors.
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry).expect("encoding metrics into a String cannot fail");
        out
    }
}

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_rendered_with_its_labels() {
        let m = Metrics::new();
        m.observe_call("registry", Duration::from_millis(3), true);
        m.observe_call("registry", Duration::from_millis(5), false);
        m.observe_step("install", Duration::from_millis(40), "ok");
        m.set_deployed(4, 2);
        m.spell_run("registry-spell", false);
        m.cache(3, 1);
        let text = m.clone().render();
        for needle in [
            r#"sysdeploy_calls_total{alias="registry"} 2"#,
            r#"sysdeploy_call_errors_total{alias="registry"} 1"#,
            r#"sysdeploy_call_duration_seconds_count{alias="registry"} 2"#,
            r#"sysdeploy_deploy_steps_total{kind="install",outcome="ok"} 1"#,
            r#"sysdeploy_deploy_step_duration_seconds_count{kind="install",outcome="ok"} 1"#,
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
    fn error_series_exist_at_zero_after_a_success() {
        let m = Metrics::new();
        m.observe_call("echo", Duration::from_micros(50), true);
        m.spell_run("tick", true);
        let text = m.render();
        assert!(text.contains(r#"sysdeploy_call_errors_total{alias="echo"} 0"#), "{text}");
        assert!(text.contains(r#"sysdeploy_spell_errors_total{alias="tick"} 0"#), "{text}");
    }
}
