//! `registry` guest: records keyed by name with issuer and timestamp, kept in
//! the service's data directory; the newest record per key wins.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sysdeploy::host::node::{log, Level};

wit_bindgen::generate!({
    world: "sysdeploy:registry/registry",
    path: ["../../../wit/host.wit", "../wit"],
    generate_all,
    additional_derives: [serde::Serialize, serde::Deserialize, Clone],
});

/// All records and settings, persisted as one JSON file (replaced atomically).
const STATE: &str = "/data/registry.json";
/// Expiry used until `set-expiry` is called: one day.
const DEFAULT_EXPIRY_SEC: u64 = 86_400;

#[derive(Serialize, Deserialize)]
struct State {
    expiry_sec: u64,
    records: BTreeMap<String, Entry>,
}

impl Default for State {
    fn default() -> Self {
        State { expiry_sec: DEFAULT_EXPIRY_SEC, records: BTreeMap::new() }
    }
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

struct Registry;

impl Guest for Registry {
    fn register(key: String, value: String, issuer: String, timestamp: u64) -> Result<(), String> {
        if key.is_empty() {
            return Err("key must not be empty".into());
        }
        if issuer.is_empty() {
            return Err("issuer must be the issuing peer id, got an empty string".into());
        }
        let mut s = load()?;
        if let Some(old) = s.records.get(&key) {
            if old.timestamp > timestamp {
                return Err(format!(
                    "record for {key:?} at {timestamp} is older than the stored one at {}; newest wins",
                    old.timestamp
                ));
            }
        }
        s.records.insert(key.clone(), Entry { key, value, issuer, timestamp });
        save(&s)
    }

    fn get(key: String) -> Option<Entry> {
        load().ok()?.records.remove(&key)
    }

    fn clear_expired(now: u64, expired_period_sec: u64) -> u32 {
        let Ok(mut s) = load() else { return 0 };
        let period = if expired_period_sec == 0 { s.expiry_sec } else { expired_period_sec };
        let before = s.records.len();
        s.records.retain(|_, r| r.timestamp.saturating_add(period) > now);
        let removed = (before - s.records.len()) as u32;
        if removed > 0 {
            if let Err(e) = save(&s) {
                log(Level::Error, &format!("clear-expired: {e}"));
                return 0;
            }
            log(Level::Info, &format!("cleared {removed} expired records"));
        }
        removed
    }

    fn set_expiry(sec: u64) -> Result<(), String> {
        if sec == 0 {
            return Err("the expiry period must be at least 1 second".into());
        }
        let mut s = load()?;
        s.expiry_sec = sec;
        save(&s)
    }

    fn get_expiry() -> u64 {
        load().map(|s| s.expiry_sec).unwrap_or(DEFAULT_EXPIRY_SEC)
    }

    fn count() -> u32 {
        load().map(|s| s.records.len() as u32).unwrap_or(0)
    }
}

export!(Registry);
