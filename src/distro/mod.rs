//! Embedded distro packages (PLACEHOLDER until the distros issue lands: only
//! the config schemas of the four system packages, hand-written).
use crate::config::schema::{KeySpec, PackageSchema, ValueType};

fn key(name: &str, ty: ValueType, default: Option<serde_json::Value>, secret: bool, legacy: &[&str]) -> KeySpec {
    KeySpec {
        name: name.into(),
        ty,
        default,
        required: false,
        secret,
        doc: String::new(),
        legacy_env: legacy.iter().map(|s| s.to_string()).collect(),
    }
}

/// Config schemas of every embedded package, in package order.
pub fn package_schemas() -> Vec<PackageSchema> {
    use serde_json::json;
    vec![
        PackageSchema {
            package: "aqua-ipfs".into(),
            keys: vec![
                key("external_api_multiaddr", ValueType::String, Some(json!("/ip4/127.0.0.1/tcp/5001")), false, &["FLUENCE_ENV_AQUA_IPFS_EXTERNAL_API_MULTIADDR"]),
                key("local_api_multiaddr", ValueType::String, Some(json!("/ip4/127.0.0.1/tcp/5001")), false, &["FLUENCE_ENV_AQUA_IPFS_LOCAL_API_MULTIADDR"]),
            ],
        },
        PackageSchema { package: "trust-graph".into(), keys: vec![] },
        PackageSchema {
            package: "registry".into(),
            keys: vec![
                key("registry_period_sec", ValueType::Integer, Some(json!(3600)), false, &[]),
                key("expired_period_sec", ValueType::Integer, Some(json!(86400)), false, &[]),
                key("renew_period_sec", ValueType::Integer, Some(json!(43200)), false, &[]),
                key("replicate_period_sec", ValueType::Integer, Some(json!(3600)), false, &[]),
            ],
        },
        PackageSchema {
            package: "decider".into(),
            keys: vec![
                key("decider_period_sec", ValueType::Integer, Some(json!(120)), false, &[]),
                key("worker_period_sec", ValueType::Integer, Some(json!(900)), false, &[]),
                key("worker_ipfs_multiaddr", ValueType::String, Some(json!("/ip4/127.0.0.1/tcp/5001")), false, &["FLUENCE_ENV_DECIDER_IPFS_MULTIADDR"]),
                key("wallet_key", ValueType::String, None, true, &[]),
            ],
        },
    ]
}
