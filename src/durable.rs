//! The one way ranksweep replaces a file: write a temporary file in the same folder, fsync it,
//! rename it over the target, fsync the folder. A reader (or a crash at any point) sees the old
//! file or the whole new one, never a part; after the call returns the new file survives a power
//! loss. `result.json`, the success sentinel, goes through here like every other atomic write.
//!
//! On any error the temporary file is removed, and the error names the errno (`ENOSPC`,
//! `EROFS`, `EACCES`, …) so that a full or read-only disk is recognisable in a job's error.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The errno's symbolic name for the errors users meet when writing results.
pub fn errno_name(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        1 => "EPERM",
        2 => "ENOENT",
        5 => "EIO",
        13 => "EACCES",
        17 => "EEXIST",
        20 => "ENOTDIR",
        21 => "EISDIR",
        24 => "EMFILE",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        36 => "ENAMETOOLONG",
        122 => "EDQUOT",
        _ => return None,
    })
}

/// `e` with `what` and its errno name in the message (`cannot write result.json: No space
/// left on device (os error 28, ENOSPC)`); the kind is kept.
pub fn describe(e: io::Error, what: impl std::fmt::Display) -> io::Error {
    let msg = match errno_name(&e) {
        Some(name) => format!("{what}: {e} ({name})"),
        None => format!("{what}: {e}"),
    };
    io::Error::new(e.kind(), msg)
}

/// Whether a folder can be written, as the errno says: `Err` with EROFS/EACCES named otherwise.
pub fn check_writable(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir).map_err(|e| describe(e, format!("cannot create {}", dir.display())))?;
    let probe = dir.join(format!(
        ".ranksweep-probe-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => {
            let ro = matches!(errno_name(&e), Some("EROFS" | "EACCES" | "EPERM"));
            let what = if ro {
                format!("{} is read-only", dir.display())
            } else {
                format!("cannot write in {}", dir.display())
            };
            Err(describe(e, what))
        }
    }
}

fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// fsyncs a folder, so that a rename or a new entry in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| describe(e, format!("cannot sync folder {}", dir.display())))
}

/// Replaces `path` with what `write` puts into the temporary path it is given (which ends with
/// `path`'s file name, so suffixes such as `.nii.gz` are kept). The folder must exist.
pub fn replace_with<E: From<io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let dir = dir_of(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}-{name}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        let shown = path.display();
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| describe(e, format!("cannot sync {shown}")))?;
        fs::rename(&tmp, path).map_err(|e| describe(e, format!("cannot rename into {shown}")))?;
        sync_dir(&dir)?;
        Ok(())
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Replaces `path` with `bytes` (see the module docs), creating its folder if needed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dir_of(path);
    fs::create_dir_all(&dir)
        .map_err(|e| describe(e, format!("cannot create {}", dir.display())))?;
    replace_with(path, |tmp| {
        let mut f = File::create(tmp)
            .map_err(|e| describe(e, format!("cannot create {}", path.display())))?;
        f.write_all(bytes)
            .and_then(|()| f.flush())
            .map_err(|e| describe(e, format!("cannot write {}", path.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/result.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        // A failing writer leaves the old file and no temporary.
        let e = replace_with(&p, |tmp| -> io::Result<()> {
            fs::write(tmp, b"half")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn errors_name_the_errno() {
        let e = describe(io::Error::from_raw_os_error(28), "cannot write x");
        assert!(e.to_string().ends_with("(ENOSPC)"), "{e}");
        let e = describe(io::Error::from_raw_os_error(30), "cannot write x");
        assert!(e.to_string().contains("EROFS"), "{e}");
    }
}
