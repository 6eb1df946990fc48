//! `trust-graph` guest: roots with weights and certificate chains whose
//! ed25519 signatures, continuity and validity periods are verified before
//! they are stored in the service's data directory.

use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sysdeploy::host::node::{log, Level};

wit_bindgen::generate!({
    world: "sysdeploy:trust-graph/trust-graph",
    path: ["../../../wit/host.wit", "../wit"],
    generate_all,
    additional_derives: [serde::Serialize, serde::Deserialize, PartialEq, Clone],
});

/// The whole graph, persisted as one JSON file (replaced atomically).
const STATE: &str = "/data/trust-graph.json";
/// Domain separation of signed link bytes (see the WIT docs of `trust`).
const DOMAIN: &[u8] = b"sysdeploy-trust-v1\0";
/// Accepted clock skew for `issued-at` in the future, in seconds.
const SKEW_SEC: u64 = 300;

#[derive(Default, Serialize, Deserialize)]
struct State {
    /// Root peer id -> weight.
    roots: BTreeMap<String, u32>,
    /// Last link's `issued-for` -> certificates ending there.
    certs: BTreeMap<String, Vec<Certificate>>,
}

fn load() -> Result<State, String> {
    match std::fs::read(STATE) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{STATE} is corrupt: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("cannot read {STATE}: {e}")),
    }
}

fn save(s: &State) -> Result<(), String> {
    let tmp = format!("{STATE}.tmp");
    let bytes = serde_json::to_vec(s).map_err(|e| e.to_string())?;
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {tmp}: {e}"))?;
    std::fs::rename(&tmp, STATE).map_err(|e| format!("cannot replace {STATE}: {e}"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// libp2p peer id of an ed25519 public key: base58 of the identity
/// multihash of the protobuf-encoded key.
fn peer_id(pk: &[u8; 32]) -> String {
    let mut mh = vec![0x00, 36, 0x08, 0x01, 0x12, 0x20];
    mh.extend_from_slice(pk);
    bs58::encode(mh).into_string()
}

fn is_peer_id(s: &str) -> bool {
    !s.is_empty() && bs58::decode(s).into_vec().is_ok()
}

fn signed_bytes(t: &Trust) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 4 + t.issued_for.len() + 16);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&(t.issued_for.len() as u32).to_le_bytes());
    m.extend_from_slice(t.issued_for.as_bytes());
    m.extend_from_slice(&t.expires_at.to_le_bytes());
    m.extend_from_slice(&t.issued_at.to_le_bytes());
    m
}

fn decode_hex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).map_err(|_| format!("{what} is not {} hex characters", 2 * N))?;
    Ok(out)
}

/// Checks signatures, continuity and validity periods (not the root).
fn verify_links(chain: &[Trust], now: u64) -> Result<(), String> {
    if chain.is_empty() {
        return Err("the certificate's chain is empty".into());
    }
    for (i, link) in chain.iter().enumerate() {
        if !is_peer_id(&link.issued_for) {
            return Err(format!("link {i}: issued-for {:?} is not a peer id", link.issued_for));
        }
        let pk: [u8; 32] = decode_hex(&link.issuer_public_key, &format!("link {i}: issuer-public-key"))?;
        let sig: [u8; 64] = decode_hex(&link.signature, &format!("link {i}: signature"))?;
        let key = VerifyingKey::from_bytes(&pk)
            .map_err(|_| format!("link {i}: issuer-public-key is not a valid ed25519 public key"))?;
        key.verify_strict(&signed_bytes(link), &Signature::from_bytes(&sig)).map_err(|_| {
            format!(
                "link {i} (issued for {}): bad signature; it was not made by the issuer key over this link's fields",
                link.issued_for
            )
        })?;
        let issuer = peer_id(&pk);
        if i == 0 && issuer != link.issued_for {
            return Err(format!(
                "link 0 must be the root's self-signed link, but its issuer key belongs to {issuer}, not {}",
                link.issued_for
            ));
        }
        if i > 0 && issuer != chain[i - 1].issued_for {
            return Err(format!(
                "link {i}: issued by {issuer}, but the previous link was issued for {}; the chain is broken",
                chain[i - 1].issued_for
            ));
        }
        if link.issued_at > link.expires_at {
            return Err(format!("link {i}: issued-at {} is after expires-at {}", link.issued_at, link.expires_at));
        }
        if link.expires_at <= now {
            return Err(format!(
                "link {i} (issued for {}) expired at {} (now {now})",
                link.issued_for, link.expires_at
            ));
        }
        if link.issued_at > now + SKEW_SEC {
            return Err(format!("link {i}: issued-at {} is in the future (now {now})", link.issued_at));
        }
    }
    Ok(())
}

fn chain_weight(state: &State, cert: &Certificate, now: u64) -> Option<u32> {
    let root = &cert.chain.first()?.issued_for;
    let w = *state.roots.get(root)?;
    if cert.chain.iter().any(|l| l.expires_at <= now) {
        return None;
    }
    let depth = (cert.chain.len() - 1) as u32;
    Some(w.checked_shr(depth).unwrap_or(0))
}

struct TrustGraph;

impl Guest for TrustGraph {
    fn set_root(peer: String, weight: u32) -> Result<(), String> {
        if !is_peer_id(&peer) {
            return Err(format!("{peer:?} is not a peer id"));
        }
        let mut s = load()?;
        if weight == 0 {
            s.roots.remove(&peer);
        } else {
            s.roots.insert(peer.clone(), weight);
        }
        save(&s)?;
        log(Level::Info, &format!("root {peer} set to weight {weight}"));
        Ok(())
    }

    fn insert_cert(cert: Certificate) -> Result<(), String> {
        verify_links(&cert.chain, now())?;
        let mut s = load()?;
        let root = &cert.chain[0].issued_for;
        if !s.roots.contains_key(root) {
            return Err(format!("the chain starts at {root}, which is not a root; call set-root first"));
        }
        let target = cert.chain[cert.chain.len() - 1].issued_for.clone();
        let list = s.certs.entry(target.clone()).or_default();
        if list.contains(&cert) {
            return Ok(());
        }
        list.push(cert);
        save(&s)?;
        log(Level::Debug, &format!("certificate for {target} stored"));
        Ok(())
    }

    fn get_weight(peer: String) -> Option<u32> {
        let s = load().ok()?;
        let now = now();
        let from_certs = s.certs.get(&peer).into_iter().flatten().filter_map(|c| chain_weight(&s, c, now));
        s.roots.get(&peer).copied().into_iter().chain(from_certs).max()
    }

    fn get_certs(peer: String) -> Vec<Certificate> {
        load().ok().and_then(|mut s| s.certs.remove(&peer)).unwrap_or_default()
    }
}

export!(TrustGraph);
