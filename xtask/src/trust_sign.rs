//! Deterministic trust-graph fixture keys and signed links: used by
//! `cargo xtask trust-certs` and, through `#[path]`, by `tests/distros.rs`, so
//! the test signs exactly as the committed fixtures were signed.

use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

/// Same domain separation as the trust-graph guest (see its WIT docs).
const DOMAIN: &[u8] = b"sysdeploy-trust-v1\0";

/// A deterministic key: the seed is blake3 of a label.
pub fn key(label: &str) -> SigningKey {
    SigningKey::from_bytes(blake3::hash(format!("sysdeploy trust-graph fixture: {label}").as_bytes()).as_bytes())
}

/// The libp2p text peer id of `k` (identity multihash of the protobuf
/// ed25519 public key, base58), as `sysdeploy::ids::PeerId` spells it.
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
