//! The data directory: its `FORMAT` file, its `LOCK` file, and the listing of its segments.
//! Start-up code: blocking syscalls are fine here (never called on a running shard).
//!
//! ```text
//! DIR/FORMAT                    "shardmq-data <version>\n"
//! DIR/LOCK                      flock(2)ed exclusively by the broker that uses DIR
//! DIR/shard-<n>-<seq>.log       log segments   (see super::segment)
//! DIR/shard-<n>-<seq>.snap      snapshots
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::segment::SegmentName;
use super::FORMAT_VERSION;

/// Name of the format file.
pub const FORMAT_FILE: &str = "FORMAT";
/// Name of the lock file.
pub const LOCK_FILE: &str = "LOCK";
const FORMAT_PREFIX: &str = "shardmq-data ";

/// Why a data directory cannot be used.
#[derive(Debug, Error)]
pub enum DirError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another process holds the directory's lock.
    #[error(
        "data directory {path} is already in use by another shardmq (its LOCK file is locked)"
    )]
    InUse {
        /// The directory.
        path: PathBuf,
    },
    /// Written by a newer shardmq.
    #[error("data directory {path} has format version {found}, newer than this shardmq supports ({supported}); run a newer shardmq, or point --data-dir elsewhere")]
    NewerFormat {
        /// The directory.
        path: PathBuf,
        /// The version in its FORMAT file.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// The FORMAT file says something else.
    #[error("{path} is not a shardmq FORMAT file (expected \"{FORMAT_PREFIX}<version>\")")]
    BadFormatFile {
        /// The file.
        path: PathBuf,
    },
    /// Not a data directory: segments without a FORMAT file, or no such directory.
    #[error("{path} is not a shardmq data directory (no FORMAT file)")]
    NotADataDir {
        /// The directory.
        path: PathBuf,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DirError + '_ {
    move |source| DirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The version in `dir`'s FORMAT file; `None` when there is none.
pub fn read_format(dir: &Path) -> Result<Option<u32>, DirError> {
    let path = dir.join(FORMAT_FILE);
    let text = match fs::read(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error(&path)(error)),
    };
    let version = std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.trim_end().strip_prefix(FORMAT_PREFIX))
        .and_then(|version| version.parse::<u32>().ok())
        .ok_or(DirError::BadFormatFile { path: path.clone() })?;
    if version > FORMAT_VERSION {
        return Err(DirError::NewerFormat {
            path: dir.to_owned(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(Some(version))
}

/// Writes the FORMAT file atomically (temporary file, fsync, rename, fsync the directory).
fn write_format(dir: &Path) -> Result<(), DirError> {
    let path = dir.join(FORMAT_FILE);
    let tmp = dir.join("FORMAT.tmp");
    let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
    file.write_all(format!("{FORMAT_PREFIX}{FORMAT_VERSION}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_error(&path))?;
    sync_dir(dir)
}

/// fsyncs a directory (after creating, renaming or removing files in it).
pub fn sync_dir(dir: &Path) -> Result<(), DirError> {
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(dir))
}

/// The segment files in `dir`, in no particular order (other files are ignored).
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentName>, DirError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        if let Some(name) = entry.file_name().to_str().and_then(SegmentName::parse) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The exclusive lock on a data directory, held until dropped (closing the file releases the
/// flock).
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// The locked directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Locks `dir` exclusively (flock on `DIR/LOCK`, created if needed). Another holder, in this
/// process or another, makes it fail with [`DirError::InUse`].
pub fn lock(dir: &Path) -> Result<DirLock, DirError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path))?;
    // SAFETY: flock on a descriptor we own, no pointers involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            DirError::InUse {
                path: dir.to_owned(),
            }
        } else {
            io_error(&path)(error)
        });
    }
    Ok(DirLock {
        _file: file,
        path: dir.to_owned(),
    })
}

/// Opens `dir` for a broker: creates it if needed, locks it, then checks its FORMAT (writing
/// it for a new directory, raising an older version to this build's, whose files it is
/// about to write; a directory with segments but no FORMAT is refused).
pub fn open(dir: &Path) -> Result<DirLock, DirError> {
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let lock = lock(dir)?;
    match read_format(dir)? {
        Some(version) if version < FORMAT_VERSION => write_format(dir)?,
        Some(_) => {}
        None if list_segments(dir)?.is_empty() => write_format(dir)?,
        None => {
            return Err(DirError::NotADataDir {
                path: dir.to_owned(),
            })
        }
    }
    Ok(lock)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir = std::env::temp_dir()
                .join(format!("shardmq-store-dir-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn open_creates_the_format_and_a_second_lock_is_refused() {
        let dir = TempDir::new("lock");
        let data = dir.0.join("data");
        let guard = open(&data).unwrap();
        assert_eq!(guard.path(), data);
        assert_eq!(read_format(&data).unwrap(), Some(FORMAT_VERSION));
        let error = open(&data).unwrap_err();
        assert!(matches!(error, DirError::InUse { .. }), "{error}");
        assert!(error.to_string().contains("already in use"));
        drop(guard);
        let again = open(&data).unwrap();
        drop(again);
    }

    #[test]
    fn an_older_format_is_raised_to_this_builds() {
        let dir = TempDir::new("older");
        fs::write(dir.0.join(FORMAT_FILE), "shardmq-data 1\n").unwrap();
        let guard = open(&dir.0).unwrap();
        assert_eq!(read_format(&dir.0).unwrap(), Some(FORMAT_VERSION));
        drop(guard);
    }

    #[test]
    fn a_newer_or_garbled_format_is_refused_clearly() {
        let dir = TempDir::new("format");
        fs::write(
            dir.0.join(FORMAT_FILE),
            format!("shardmq-data {}\n", FORMAT_VERSION + 1),
        )
        .unwrap();
        let error = open(&dir.0).unwrap_err();
        assert!(matches!(error, DirError::NewerFormat { .. }));
        assert!(error
            .to_string()
            .contains("newer than this shardmq supports"));
        fs::write(dir.0.join(FORMAT_FILE), "hello").unwrap();
        assert!(matches!(
            read_format(&dir.0),
            Err(DirError::BadFormatFile { .. })
        ));
    }

    #[test]
    fn segments_without_a_format_file_are_not_adopted() {
        let dir = TempDir::new("noformat");
        fs::write(dir.0.join("shard-000-00000000000000000001.log"), b"").unwrap();
        fs::write(dir.0.join("notes.txt"), b"").unwrap();
        assert_eq!(list_segments(&dir.0).unwrap().len(), 1);
        assert!(matches!(open(&dir.0), Err(DirError::NotADataDir { .. })));
    }
}
