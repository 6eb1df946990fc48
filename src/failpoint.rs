//! Crash points for the crash tests: `crash_point!("deploy::install::created")`
//! kills the process with SIGKILL when `FAILPOINTS=<name>=return` is set and
//! the binary was built with the `failpoints` feature; otherwise it compiles
//! to nothing. Every name is listed in [`CRASH_POINTS`] so the crash matrix
//! can walk all of them.

/// Kills the process at a failpoint (only reached with `failpoints` on).
macro_rules! crash_point {
    ($name:literal) => {
        fail::fail_point!($name, |_| {
            $crate::failpoint::die($name);
        });
    };
}

/// Every crash point in the code, with the operation that passes through it.
pub const CRASH_POINTS: &[(&str, &str)] = &[
    ("deploy::install::intents", "install"),
    ("deploy::install::created", "install"),
    ("deploy::install::initialised", "install"),
    ("deploy::install::bound", "install"),
    ("deploy::replace::created", "replace"),
    ("deploy::replace::copied", "replace"),
    ("deploy::replace::initialised", "replace"),
    ("deploy::replace::swapped", "replace"),
    ("deploy::replace::recorded", "replace"),
    ("deploy::replace::old-removed", "replace"),
    ("deploy::replace::migrated", "migrate"),
    ("deploy::replace::kept-recorded", "keep-data"),
    ("deploy::replace::kept-moved", "keep-data"),
    ("deploy::reinit::started", "reinit"),
    ("deploy::reinit::called", "reinit"),
    ("deploy::remove::started", "remove"),
    ("deploy::remove::unbound", "remove"),
    ("deploy::remove::removed", "remove"),
    ("deploy::install-spell::created", "install-spell"),
    ("deploy::install-spell::bound", "install-spell"),
    ("deploy::update-spell::started", "update-spell"),
    ("deploy::update-spell::updated", "update-spell"),
    ("deploy::kv-apply::started", "kv-apply"),
    ("deploy::kv-apply::applied", "kv-apply"),
    ("deploy::remove-spell::started", "remove-spell"),
    ("deploy::remove-spell::unbound", "remove-spell"),
    ("runtime::cache::temp-written", "cache-write"),
    ("runtime::cache::artifact-written", "cache-write"),
    ("runtime::gc::blueprint-removed", "gc"),
    ("runtime::gc::component-files-removed", "gc"),
    // After a generation is recorded, before GC and the report (issue 17).
    ("deploy::generation::recorded", "gc"),
    // Not deployment steps: the crash matrix skips these; tests/snapshot.rs kills them.
    ("snapshot::create::staged", "snapshot"),
    ("snapshot::restore::extracted", "snapshot"),
    ("snapshot::restore::moving", "snapshot"),
];

/// An in-process record of the order of durability-relevant events (data
/// synced, alias bound, old service removed, entry recorded), so a test can
/// prove that data is made durable before the commit that points an alias
/// at it. Off (one atomic load per event) unless a test turns it on.
pub mod trace {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    type Hook = std::sync::Arc<dyn Fn(&str) + Send + Sync>;

    static ON: AtomicBool = AtomicBool::new(false);
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    static HOOKS: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

    /// Starts recording (for the rest of the process).
    pub fn enable() {
        ON.store(true, Ordering::SeqCst);
    }

    /// Also calls `hook` with every event, on the thread that records it (a
    /// test may block there to hold the deployment at that point).
    pub fn add_hook(hook: impl Fn(&str) + Send + Sync + 'static) {
        enable();
        HOOKS.lock().unwrap_or_else(|p| p.into_inner()).push(std::sync::Arc::new(hook));
    }

    /// Records an event when recording is on.
    pub fn event(what: impl FnOnce() -> String) {
        if ON.load(Ordering::Relaxed) {
            let e = what();
            LOG.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
            let hooks = HOOKS.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for h in hooks {
                h(&e);
            }
        }
    }

    /// Every event recorded so far.
    pub fn events() -> Vec<String> {
        LOG.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[doc(hidden)]
pub fn die(at: &str) -> ! {
    eprintln!("failpoint {at}: killing this process with SIGKILL");
    // SAFETY: kill(2) on our own pid with a valid signal number.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

#[cfg(test)]
mod tests {
    /// The list above and the `crash_point!` calls in the code agree, so the
    /// crash matrix cannot silently miss a point.
    #[test]
    fn crash_point_list_matches_the_code() {
        fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("failpoint.rs") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for part in text.split("crash_point!(\"").skip(1) {
                        out.push(part.split('"').next().unwrap().to_string());
                    }
                }
            }
        }
        let mut found = Vec::new();
        walk(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
        found.sort();
        let mut listed: Vec<String> = super::CRASH_POINTS.iter().map(|(n, _)| n.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed);
    }
}
