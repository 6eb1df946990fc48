//! Test fixture `hostile`: each export tries to take more than its share of
//! what the node's services share (disk, inodes, descriptors, the log, host
//! memory) and reports what it got and the error that stopped it, so the
//! tests can check the error a guest sees is an error code, not a trap.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::sync::Mutex;
use sysdeploy::host::node::{log, Level};

wit_bindgen::generate!({
    world: "hostile",
    path: "wit",
    generate_all,
});

struct Hostile;

/// Files kept open across calls (instances live across calls).
static HELD: Mutex<Vec<File>> = Mutex::new(Vec::new());

const CHUNK: usize = 64 * 1024;

fn describe(e: std::io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

fn outcome(done: u64, r: std::io::Result<()>) -> Outcome {
    Outcome { done, error: r.err().map(describe) }
}

fn write_all(mut f: File, len: u64) -> Outcome {
    let chunk = vec![0xa5u8; CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(CHUNK as u64) as usize;
        if let Err(e) = f.write_all(&chunk[..n]) {
            return outcome(done, Err(e));
        }
        done += n as u64;
    }
    outcome(done, f.flush())
}

impl Guest for Hostile {
    fn write_file(path: String, len: u64) -> Outcome {
        match File::create(&path) {
            Ok(f) => write_all(f, len),
            Err(e) => outcome(0, Err(e)),
        }
    }

    fn append_file(path: String, len: u64) -> Outcome {
        match OpenOptions::new().append(true).create(true).open(&path) {
            Ok(f) => write_all(f, len),
            Err(e) => outcome(0, Err(e)),
        }
    }

    fn set_size(path: String, size: u64) -> Outcome {
        let r = OpenOptions::new().write(true).create(true).truncate(false).open(&path).and_then(|f| f.set_len(size));
        outcome(if r.is_ok() { size } else { 0 }, r)
    }

    fn truncate_read_only(path: String, size: u64) -> Outcome {
        let r = File::open(&path).and_then(|f| f.set_len(size));
        outcome(if r.is_ok() { size } else { 0 }, r)
    }

    fn make_files(dir: String, count: u32) -> Outcome {
        if let Err(e) = std::fs::create_dir_all(&dir) {
            return outcome(0, Err(e));
        }
        for i in 0..count {
            if let Err(e) = File::create(format!("{dir}/f{i}")) {
                return outcome(u64::from(i), Err(e));
            }
        }
        outcome(u64::from(count), Ok(()))
    }

    fn remove_path(path: String) -> Outcome {
        let r = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) => Err(e),
        };
        outcome(u64::from(r.is_ok()), r)
    }

    fn hold_open(count: u32) -> Outcome {
        if let Err(e) = std::fs::create_dir_all("/data/held") {
            return outcome(0, Err(e));
        }
        let mut held = HELD.lock().unwrap();
        for i in 0..count {
            let path = format!("/data/held/h{}", held.len());
            match OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path) {
                Ok(f) => held.push(f),
                Err(e) => return outcome(u64::from(i), Err(e)),
            }
        }
        outcome(u64::from(count), Ok(()))
    }

    fn release() -> u32 {
        let mut held = HELD.lock().unwrap();
        let n = held.len() as u32;
        held.clear();
        n
    }

    fn log_flood(count: u32, message: String) {
        for _ in 0..count {
            log(Level::Info, &message);
        }
    }

    fn print(out: String, err: String) {
        let _ = std::io::stdout().write_all(out.as_bytes());
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().write_all(err.as_bytes());
    }

    fn crash(message: String) {
        eprintln!("{message}");
        panic!("hostile guest crashed on purpose");
    }

    fn big_result(len: u64) -> String {
        "x".repeat(len as usize)
    }

    fn read_sum(path: String) -> Outcome {
        let mut buf = Vec::new();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut buf)) {
            Ok(_) => outcome(buf.iter().map(|b| u64::from(*b)).sum(), Ok(())),
            Err(e) => outcome(0, Err(e)),
        }
    }
}

export!(Hostile);
