//! Test fixture `kv-migrate`: the kv-store service (one file per key under
//! `/data/kv/`, the greeting in `/data/greeting`) plus `migrate`, which the
//! deployer calls after carrying the data of an older version over. The
//! default build records the from-version in its data; `err` refuses, `trap`
//! panics halfway (after writing), and `bad-signature` exports `migrate`
//! with a u32 parameter.

#[cfg(not(feature = "bad-signature"))]
wit_bindgen::generate!({
    world: "kv-migrate",
    path: "wit",
});

#[cfg(feature = "bad-signature")]
wit_bindgen::generate!({
    world: "kv-migrate-bad-signature",
    path: "wit",
});

struct KvMigrate;

fn key_path(key: &str) -> String {
    // Hex-encode so any key is a safe file name (as tests/distros/guest does).
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("/data/kv/k{hex}")
}

/// Records `from` in `/data/migrated-from` (the stored values keep their
/// format: the test reads them back unchanged).
fn migrate_data(from: &str) {
    std::fs::write("/data/migrated-from", from).expect("write migrated-from");
}

impl Guest for KvMigrate {
    fn put(key: String, value: String) {
        std::fs::create_dir_all("/data/kv").expect("create /data/kv");
        std::fs::write(key_path(&key), value).expect("write value");
    }

    fn get(key: String) -> Option<String> {
        std::fs::read_to_string(key_path(&key)).ok()
    }

    fn set_greeting(greeting: String) {
        std::fs::write("/data/greeting", greeting).expect("write greeting");
    }

    fn greeting() -> String {
        std::fs::read_to_string("/data/greeting").unwrap_or_default()
    }

    fn version() -> u32 {
        3
    }

    fn migrated_from() -> String {
        std::fs::read_to_string("/data/migrated-from").unwrap_or_default()
    }

    #[cfg(not(feature = "bad-signature"))]
    fn migrate(from_version: String) -> Result<(), String> {
        if cfg!(feature = "err") {
            return Err(format!("kv-migrate built with err: cannot migrate data from {from_version}"));
        }
        migrate_data(&from_version);
        if cfg!(feature = "trap") {
            panic!("kv-migrate built with trap: migrate of data from {from_version} panics after writing");
        }
        Ok(())
    }

    #[cfg(feature = "bad-signature")]
    fn migrate(from_version: u32) -> Result<(), String> {
        migrate_data(&from_version.to_string());
        Ok(())
    }
}

export!(KvMigrate);
