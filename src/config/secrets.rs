//! Secrets given as files: `SYSDEPLOY_<KEY>_FILE=path`, a `<key>_file =
//! "path"` line of the config file, and systemd credentials (a file named by
//! the dotted key in `$CREDENTIALS_DIRECTORY`).
//!
//! A secret file must be a regular file accessible by its owner only (no
//! group or other permission bits), with one exception: group-read alone
//! (`0440`, `0640`) when the file's group is one of this process's groups —
//! what Kubernetes makes of a Secret volume with `fsGroup`. Group write or
//! execute and every bit for others are refused, before the file is read.
//! Trailing newlines (LF or CRLF) are removed; the contents never reach a
//! message.

use super::catalog::{Catalog, Leaf};
use super::problem::ConfigProblem;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Suffix of the file form of a secret key (`wallet_key_file`, and `_FILE`
/// in env names).
pub const FILE_SUFFIX: &str = "_file";
/// Set by systemd for a unit with `LoadCredential=`.
pub const ENV_CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
/// Larger files are refused: no secret key holds more.
const MAX_BYTES: u64 = 64 * 1024;

/// The key a `<key>_file` path stands for, if `path` is such a form of a known
/// key (secret or not: the caller refuses the non-secret ones).
pub(crate) fn target<'c>(cat: &'c Catalog, path: &str) -> Option<&'c Leaf> {
    cat.leaf(path.strip_suffix(FILE_SUFFIX)?)
}

/// Reads the secret of `key` from `path`; `via` says what named the file.
/// Checks the kind and mode before opening it.
pub(crate) fn read(key: &str, path: &Path, via: &str) -> Result<String, ConfigProblem> {
    let fail = |reason: String| ConfigProblem::SecretFile { key: key.into(), path: path.to_path_buf(), via: via.into(), reason };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot be read: {e}; expected a file holding the secret")))?;
    if !meta.is_file() {
        return Err(fail("is not a regular file; expected a file holding the secret".into()));
    }
    let mode = meta.mode() & 0o7777;
    if let Err(why) = mode_allowed(mode, meta.gid(), &process_groups()) {
        return Err(fail(format!(
            "has mode {mode:04o} (group gid {}), {why}; a secret file must be accessible by its owner only (chmod 600 {}), \
             or readable by one of this process's groups and nothing more (mode 0440 or 0640, as Kubernetes mounts a \
             Secret with fsGroup)",
            meta.gid(),
            path.display()
        )));
    }
    if meta.len() > MAX_BYTES {
        return Err(fail(format!("holds {} bytes; expected a secret of at most {MAX_BYTES} bytes", meta.len())));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| fail(format!("cannot be read: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail("is not valid UTF-8 text; expected the secret as text".into()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}

/// Whether a secret file's `mode` and group `gid` are private enough for a
/// process in `groups`; else why not (for the message).
fn mode_allowed(mode: u32, gid: u32, groups: &[u32]) -> Result<(), String> {
    if mode & 0o007 != 0 {
        return Err("which lets other users access it".into());
    }
    if mode & 0o030 != 0 {
        return Err("which lets its group write or execute it".into());
    }
    if mode & 0o040 != 0 && !groups.contains(&gid) {
        return Err(format!(
            "which lets group {gid} read it, and this process is not in that group (its groups: {})",
            groups.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
        ));
    }
    Ok(())
}

/// The effective gid and the supplementary groups of this process.
fn process_groups() -> Vec<u32> {
    // SAFETY: getegid has no preconditions; getgroups writes at most `n`
    // entries into a buffer of `n` (a first call with 0 asks for the count).
    let mut groups = vec![unsafe { libc::getegid() }];
    let n = unsafe { libc::getgroups(0, std::ptr::null_mut()) };
    if n > 0 {
        let mut buf = vec![0 as libc::gid_t; n as usize];
        let got = unsafe { libc::getgroups(n, buf.as_mut_ptr()) };
        if got > 0 {
            buf.truncate(got as usize);
            groups.extend(buf);
        }
    }
    groups.sort_unstable();
    groups.dedup();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only_or_group_read_by_our_group() {
        let ours = [0, 1000, 2000];
        for ok in [0o600, 0o400, 0o700, 0o440, 0o640] {
            assert_eq!(mode_allowed(ok, 2000, &ours), Ok(()), "{ok:o}");
        }
        // Group-read by a group we are not in.
        assert!(mode_allowed(0o440, 3000, &ours).unwrap_err().contains("not in that group"));
        // Group write or execute, even for our group; any bit for others.
        for bad in [0o660, 0o620, 0o650, 0o610, 0o604, 0o644, 0o601, 0o602, 0o444] {
            assert!(mode_allowed(bad, 2000, &ours).is_err(), "{bad:o}");
        }
        assert!(process_groups().contains(&unsafe { libc::getegid() }));
    }
}
