//! The per-service limits a service runs with, for `status` and
//! `/v1/services`: its blueprint's `ServiceLimits` over the node's defaults.

use super::{records, Blueprint, RuntimeError, RuntimeOptions};
use crate::ids::BlueprintId;
use crate::store::Store;
use serde_json::{json, Value};
use std::collections::HashMap;

/// Node-wide defaults the per-service values replace.
#[derive(Debug, Clone, Copy)]
pub struct LimitDefaults {
    /// `system_services.call_ttl_ms`.
    pub call_ttl_ms: u64,
    /// Calls admitted per service (`RuntimeOptions::max_queued_calls`).
    pub queue_depth: u64,
    /// Memory cap of a component that sets none.
    pub memory_limit_mb: u64,
}

impl LimitDefaults {
    /// The node's defaults for a config's `call_ttl_ms`.
    pub fn for_node(call_ttl_ms: u64) -> Self {
        let o = RuntimeOptions::default();
        LimitDefaults { call_ttl_ms, queue_depth: o.max_queued_calls as u64, memory_limit_mb: o.default_memory_limit_mb }
    }
}

/// Every recorded blueprint (read-only; for `status`).
pub fn read_blueprints(store: &Store) -> Result<HashMap<BlueprintId, Blueprint>, RuntimeError> {
    Ok(records::blueprints(store)?.into_iter().collect())
}

/// `{call_ttl_ms, queue_depth, memory_limit_mb: {component: MiB},
/// allowed_outbound_hosts, set_by_package: [keys]}`: what the service runs
/// with, and which of these its `distro.toml` set.
pub fn limits_json(bp: &Blueprint, d: &LimitDefaults) -> Value {
    let l = &bp.limits;
    let mut set = Vec::new();
    if l.call_ttl_ms.is_some() {
        set.push("call_ttl_ms");
    }
    if l.queue_depth.is_some() {
        set.push("queue_depth");
    }
    if bp.components.iter().any(|c| c.memory_limit_mb.is_some()) {
        set.push("memory_limit_mb");
    }
    if !l.allowed_outbound_hosts.is_empty() {
        set.push("allowed_outbound_hosts");
    }
    let memory: serde_json::Map<String, Value> =
        bp.components.iter().map(|c| (c.name.clone(), json!(c.memory_limit_mb.unwrap_or(d.memory_limit_mb)))).collect();
    json!({
        "call_ttl_ms": l.call_ttl_ms.unwrap_or(d.call_ttl_ms),
        "queue_depth": l.queue_depth.map_or(d.queue_depth, u64::from),
        "memory_limit_mb": memory,
        "allowed_outbound_hosts": l.allowed_outbound_hosts,
        "set_by_package": set,
    })
}

/// Adds `limits` (see [`limits_json`]) to each service entry whose
/// `blueprint_id` is in `blueprints`.
pub fn add_limits(services: &mut [Value], blueprints: &HashMap<BlueprintId, Blueprint>, d: &LimitDefaults) {
    for s in services {
        let bp = s["blueprint_id"].as_str().and_then(|h| BlueprintId::from_hex(h).ok()).and_then(|id| blueprints.get(&id));
        if let (Some(bp), Value::Object(o)) = (bp, &mut *s) {
            o.insert("limits".into(), limits_json(bp, d));
        }
    }
}

/// One line for the human `status`: `ttl 500 ms, queue 1, memory x 64 MiB, outbound none`.
pub fn limits_line(limits: &Value) -> Option<String> {
    let ttl = limits["call_ttl_ms"].as_u64()?;
    let queue = limits["queue_depth"].as_u64()?;
    let memory: Vec<String> = limits["memory_limit_mb"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(c, mb)| format!("{c} {} MiB", mb.as_u64().unwrap_or(0)))
        .collect();
    let hosts: Vec<&str> = limits["allowed_outbound_hosts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let outbound = if hosts.is_empty() { "none".to_string() } else { hosts.join(" ") };
    Some(format!("limits: ttl {ttl} ms, queue {queue}, memory {}, outbound HTTP {outbound}", memory.join(", ")))
}

impl super::Runtime {
    /// The blueprints the runtime knows, by id.
    pub fn blueprints(&self) -> HashMap<BlueprintId, Blueprint> {
        super::read(&self.inner.blueprints).clone()
    }

    /// The defaults this runtime runs services with.
    pub fn limit_defaults(&self) -> LimitDefaults {
        let o = &self.inner.opts;
        LimitDefaults {
            call_ttl_ms: u64::try_from(self.inner.cfg.call_ttl.as_millis()).unwrap_or(u64::MAX),
            queue_depth: o.max_queued_calls.max(1) as u64,
            memory_limit_mb: o.default_memory_limit_mb,
        }
    }
}
