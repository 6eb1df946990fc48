//! Test fixture `hostile`: the attacks of issue 20 a guest can mount through
//! its own `/data` (15,000-level trees, sparse files, hard links, symlinks
//! planted to be swapped in while the host copies the tree). The host must
//! contain each; `tests/containment.rs` drives them.

wit_bindgen::generate!({
    world: "hostile",
    path: "wit",
});

use std::ffi::CString;
use std::fs;
use std::io::{Seek, SeekFrom, Write};

struct Hostile;

fn at(path: &str) -> String {
    format!("/data/{path}")
}

fn err(what: &str, path: &str, e: impl std::fmt::Display) -> String {
    format!("{what} {path}: {e}")
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|e| format!("{s:?}: {e}"))
}

impl Guest for Hostile {
    fn put_file(path: String, content: String) -> Result<(), String> {
        let p = at(&path);
        if let Some(parent) = std::path::Path::new(&p).parent() {
            fs::create_dir_all(parent).map_err(|e| err("mkdir", &path, e))?;
        }
        fs::write(&p, content).map_err(|e| err("write", &path, e))
    }

    fn get_file(path: String) -> Result<String, String> {
        fs::read_to_string(at(&path)).map_err(|e| err("read", &path, e))
    }

    fn deep(path: String, levels: u32) -> Result<u32, String> {
        let top = at(&path);
        let tmp = at(&format!("{path}.n"));
        fs::create_dir_all(&top).map_err(|e| err("mkdir", &path, e))?;
        for i in 0..levels {
            fs::create_dir(&tmp).map_err(|e| err("mkdir", &tmp, e))?;
            fs::rename(&top, format!("{tmp}/d")).map_err(|e| err("rename", &format!("level {i}"), e))?;
            fs::rename(&tmp, &top).map_err(|e| err("rename", &format!("level {i}"), e))?;
        }
        Ok(levels)
    }

    fn depth(path: String) -> Result<u32, String> {
        // Walk down with one directory handle at a time through the guest's
        // own WASI layer (relative opens, no long paths).
        let mut dir = fs::File::open(at(&path)).map_err(|e| err("open", &path, e))?;
        let mut n = 0;
        loop {
            let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
            let d = cstr("d")?;
            // SAFETY: `fd` is an open directory, `d` a NUL-terminated name.
            let child = unsafe { libc::openat(fd, d.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
            if child < 0 {
                return Ok(n);
            }
            // SAFETY: `child` is a descriptor we own from here on.
            dir = unsafe { std::os::fd::FromRawFd::from_raw_fd(child) };
            n += 1;
        }
    }

    fn sparse(path: String, size: u64, head: String, tail: String) -> Result<(), String> {
        let mut f = fs::File::create(at(&path)).map_err(|e| err("create", &path, e))?;
        f.set_len(size).map_err(|e| err("truncate", &path, e))?;
        f.write_all(head.as_bytes()).map_err(|e| err("write", &path, e))?;
        let end = size.checked_sub(tail.len() as u64).ok_or_else(|| format!("{path}: tail longer than the file"))?;
        f.seek(SeekFrom::Start(end)).map_err(|e| err("seek", &path, e))?;
        f.write_all(tail.as_bytes()).map_err(|e| err("write", &path, e))
    }

    fn hard_link(path: String, link: String) -> Result<(), String> {
        fs::hard_link(at(&path), at(&link)).map_err(|e| err("link", &link, e))
    }

    fn make_symlink(target: String, link: String) -> Result<(), String> {
        let (t, l) = (cstr(&target)?, cstr(&at(&link))?);
        // SAFETY: both are NUL-terminated strings that outlive the call.
        if unsafe { libc::symlink(t.as_ptr(), l.as_ptr()) } != 0 {
            return Err(err("symlink", &link, std::io::Error::last_os_error()));
        }
        Ok(())
    }

    fn move_entry(src: String, dst: String) -> Result<(), String> {
        fs::rename(at(&src), at(&dst)).map_err(|e| err("rename", &src, e))
    }
}

export!(Hostile);
