//! `connector` guest of the decider package: a persistent work queue and the
//! wallet key, both kept in the service's data directory.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use sysdeploy::host::node::{log, Level};

wit_bindgen::generate!({
    world: "sysdeploy:decider/connector",
    path: ["../../../wit/host.wit", "../wit"],
    generate_all,
});

/// Queue state, persisted as one JSON file (replaced atomically).
const QUEUE: &str = "/data/queue.json";
/// The wallet key, alone in its own file so the queue file never holds it.
const WALLET: &str = "/data/wallet.key";

#[derive(Default, Serialize, Deserialize)]
struct Queue {
    next_id: u64,
    items: BTreeMap<u64, String>,
}

fn write_atomic(path: &str, bytes: &[u8]) -> Result<(), String> {
    let tmp = format!("{path}.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| format!("cannot write {tmp}: {e}"))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {path}: {e}"))
}

fn load() -> Queue {
    match std::fs::read(QUEUE) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            log(Level::Error, &format!("{QUEUE} is corrupt ({e}); starting an empty queue"));
            Queue::default()
        }),
        Err(_) => Queue::default(),
    }
}

fn save(q: &Queue) {
    let bytes = serde_json::to_vec(q).expect("queue serialises");
    if let Err(e) = write_atomic(QUEUE, &bytes) {
        // Losing the queue silently would drop work: trap so the caller sees it.
        panic!("{e}");
    }
}

struct Connector;

impl Guest for Connector {
    fn enqueue(item: String) -> u64 {
        let mut q = load();
        let id = q.next_id + 1;
        q.next_id = id;
        q.items.insert(id, item);
        save(&q);
        id
    }

    fn poll(max: u32) -> Vec<WorkItem> {
        load().items.into_iter().take(max as usize).map(|(id, item)| WorkItem { id, item }).collect()
    }

    fn ack(id: u64) -> Result<(), String> {
        let mut q = load();
        if q.items.remove(&id).is_none() {
            return Err(format!("no queued item has id {id}; it was already acknowledged or never enqueued"));
        }
        save(&q);
        Ok(())
    }

    fn pending() -> u32 {
        load().items.len() as u32
    }

    fn set_wallet_key(key: String) -> Result<(), String> {
        // Never echo the key, not even in an error.
        if key.trim().is_empty() || key.chars().any(char::is_whitespace) {
            return Err("the wallet key must be non-empty and contain no whitespace".into());
        }
        write_atomic(WALLET, key.as_bytes())?;
        log(Level::Info, "wallet key stored");
        Ok(())
    }

    fn has_wallet_key() -> bool {
        std::fs::metadata(WALLET).map(|m| m.len() > 0).unwrap_or(false)
    }
}

export!(Connector);
