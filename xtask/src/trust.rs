//! `cargo xtask trust-certs`: writes the trust-graph package's bundled
//! `roots.json` and `certs.json` with real ed25519 signatures made from fixed
//! seeds, so the files are reproducible byte for byte.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};
use std::path::Path;

/// Same domain separation as the trust-graph guest (see its WIT docs).
const DOMAIN: &[u8] = b"sysdeploy-trust-v1\0";
/// 2023-11-14T22:13:20Z.
const ISSUED_AT: u64 = 1_700_000_000;
/// 2100-01-01T00:00:00Z.
const EXPIRES_AT: u64 = 4_102_444_800;

/// A deterministic key: the seed is blake3 of a label.
pub fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(blake3::hash(format!("sysdeploy trust-graph fixture: {label}").as_bytes()).as_bytes())
}

pub fn peer_id(k: &SigningKey) -> String {
    let mut mh = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    mh.extend_from_slice(k.verifying_key().as_bytes());
    bs58::encode(mh).into_string()
}

/// One signed link: `issuer` vouches for `issued_for`.
pub fn link(issuer: &SigningKey, issued_for: &str, expires_at: u64, issued_at: u64) -> Value {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&(issued_for.len() as u32).to_le_bytes());
    m.extend_from_slice(issued_for.as_bytes());
    m.extend_from_slice(&expires_at.to_le_bytes());
    m.extend_from_slice(&issued_at.to_le_bytes());
    json!({
        "issued-for": issued_for,
        "issuer-public-key": hex::encode(issuer.verifying_key().as_bytes()),
        "signature": hex::encode(issuer.sign(&m).to_bytes()),
        "expires-at": expires_at,
        "issued-at": issued_at,
    })
}

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
