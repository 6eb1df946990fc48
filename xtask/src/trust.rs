//! `cargo xtask trust-certs`: writes the trust-graph package's bundled
//! `roots.json` and `certs.json` with real ed25519 signatures made from fixed
//! seeds, so the files are reproducible byte for byte.

use crate::trust_sign::{key, link, peer_id};
use serde_json::json;
use std::path::Path;

/// 2023-11-14T22:13:20Z.
const ISSUED_AT: u64 = 1_700_000_000;
/// 2100-01-01T00:00:00Z.
const EXPIRES_AT: u64 = 4_102_444_800;

pub fn run(repo: &Path) -> anyhow::Result<()> {
    let root = key("root");
    let relay = key("relay");
    let worker = key("worker");
    let (r, a, w) = (peer_id(&root), peer_id(&relay), peer_id(&worker));
    let root_link = link(&root, &r, EXPIRES_AT, ISSUED_AT);
    let roots = json!([{ "peer": r, "weight": 16 }]);
    let certs = json!([
        { "chain": [root_link.clone(), link(&root, &a, EXPIRES_AT, ISSUED_AT)] },
        { "chain": [root_link, link(&root, &a, EXPIRES_AT, ISSUED_AT), link(&relay, &w, EXPIRES_AT, ISSUED_AT)] },
    ]);
    let dir = repo.join("distros/trust-graph");
    std::fs::write(dir.join("roots.json"), serde_json::to_string_pretty(&roots)? + "\n")?;
    std::fs::write(dir.join("certs.json"), serde_json::to_string_pretty(&certs)? + "\n")?;
    println!("wrote distros/trust-graph/roots.json (root {r}) and certs.json (relay {a}, worker {w})");
    Ok(())
}
