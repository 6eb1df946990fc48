//! Secrets given as files: `SYSDEPLOY_<KEY>_FILE=path`, a `<key>_file =
//! "path"` line of the config file, and systemd credentials (a file named by
//! the dotted key in `$CREDENTIALS_DIRECTORY`).
//!
//! A secret file must be a regular file accessible by its owner only (no
//! group or other permission bits): anything wider is refused before the
//! file is read. Trailing newlines (LF or CRLF) are removed; the contents
//! never reach a message.

use super::catalog::{Catalog, Leaf};
use super::problem::ConfigProblem;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
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
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "has mode {mode:04o}, which lets its group or other users access it; a secret file must be accessible by its \
             owner only: chmod 600 {}",
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
