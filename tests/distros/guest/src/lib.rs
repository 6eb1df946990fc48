//! Test fixture `kv-store`: one file per key under `/data/kv/` and the
//! greeting in `/data/greeting`, so data survives restarts and blue-green
//! replaces with `keep_data`.

wit_bindgen::generate!({
    world: "kv-store",
    path: "wit",
});

struct KvStore;

fn key_path(key: &str) -> String {
    // Hex-encode so any key is a safe file name.
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("/data/kv/k{hex}")
}

impl Guest for KvStore {
    fn put(key: String, value: String) {
        std::fs::create_dir_all("/data/kv").expect("create /data/kv");
        std::fs::write(key_path(&key), value).expect("write value");
    }

    fn get(key: String) -> Option<String> {
        std::fs::read_to_string(key_path(&key)).ok()
    }

    fn set_greeting(greeting: String) {
        if cfg!(feature = "fail-init") {
            panic!("kv-store built with fail-init: set-greeting always fails");
        }
        std::fs::write("/data/greeting", greeting).expect("write greeting");
    }

    fn greeting() -> String {
        std::fs::read_to_string("/data/greeting").unwrap_or_default()
    }

    fn version() -> u32 {
        if cfg!(feature = "v2") {
            2
        } else {
            1
        }
    }
}

export!(KvStore);
