//! Where log lines go: stderr, or a file opened in append mode that SIGHUP reopens (log
//! rotation: logrotate renames the file, sends SIGHUP, and the broker goes on in a new file at
//! the configured path).
//!
//! [`LogOutput`] is the `MakeWriter` of the `tracing-subscriber` formatting layer. Every event
//! is formatted by the layer into a buffer of its own and written with one `write_all` on a
//! [`LogLine`], which holds the output's lock for that one write (a single `write(2)` on an
//! `O_APPEND` file: lines from different shard threads never interleave). Reopening opens the
//! new file without the lock and only swaps it in under it, so a shard thread never waits for
//! an `open(2)`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tracing_subscriber::fmt::MakeWriter;

/// The log destination shared by every thread; clones write to the same place.
#[derive(Debug, Clone)]
pub struct LogOutput {
    target: Arc<Mutex<Target>>,
}

#[derive(Debug)]
enum Target {
    Stderr,
    File { path: PathBuf, file: File },
}

impl LogOutput {
    /// Log lines to stderr.
    pub fn stderr() -> LogOutput {
        LogOutput {
            target: Arc::new(Mutex::new(Target::Stderr)),
        }
    }

    /// Log lines appended to `path` (created if missing), or to stderr when `None`.
    pub fn open(path: Option<&Path>) -> io::Result<LogOutput> {
        let target = match path {
            Some(path) => Target::File {
                path: path.to_path_buf(),
                file: open_append(path)?,
            },
            None => Target::Stderr,
        };
        Ok(LogOutput {
            target: Arc::new(Mutex::new(target)),
        })
    }

    /// Opens `path` anew (the same path after a rotation, or a new one) and swaps it in; `None`
    /// switches to stderr. On error the current destination stays.
    pub fn reopen(&self, path: Option<&Path>) -> io::Result<()> {
        // Opened before taking the lock: writers only ever wait for the swap.
        let new = match path {
            Some(path) => Target::File {
                path: path.to_path_buf(),
                file: open_append(path)?,
            },
            None => Target::Stderr,
        };
        let old = std::mem::replace(&mut *self.lock(), new);
        // The old file is closed here, after the lock is released.
        drop(old);
        Ok(())
    }

    /// The file the lines go to; `None` for stderr.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.lock() {
            Target::Stderr => None,
            Target::File { path, .. } => Some(path.clone()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Target> {
        // A panic while writing a line leaves nothing half-updated worth refusing.
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The writer for one log line: holds the output's lock until dropped.
#[derive(Debug)]
pub struct LogLine<'a> {
    target: MutexGuard<'a, Target>,
}

impl Write for LogLine<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut *self.target {
            Target::Stderr => io::stderr().write(buf),
            Target::File { file, .. } => file.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match &mut *self.target {
            Target::Stderr => io::stderr().write_all(buf),
            Target::File { file, .. } => file.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut *self.target {
            Target::Stderr => io::stderr().flush(),
            // Unbuffered: every write is already in the file.
            Target::File { .. } => Ok(()),
        }
    }
}

impl<'a> MakeWriter<'a> for LogOutput {
    type Writer = LogLine<'a>;

    fn make_writer(&'a self) -> LogLine<'a> {
        LogLine {
            target: self.lock(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("shardmq-logging-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn appends_and_reopens_after_a_rename() {
        let dir = temp_dir("reopen");
        let log = dir.join("a.log");
        std::fs::write(&log, "before\n").unwrap();
        let output = LogOutput::open(Some(&log)).unwrap();
        assert_eq!(output.path().as_deref(), Some(log.as_path()));
        output.make_writer().write_all(b"one\n").unwrap();

        // Rotation: renamed, then reopened at the same path.
        let rotated = dir.join("a.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        output.make_writer().write_all(b"two\n").unwrap();
        output.reopen(Some(&log)).unwrap();
        output.make_writer().write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap(),
            "before\none\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "three\n");

        // A path that cannot be opened keeps the current file.
        let bad = dir.join("no-such-dir").join("x.log");
        assert!(output.reopen(Some(&bad)).is_err());
        output.make_writer().write_all(b"four\n").unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "three\nfour\n");

        // Back to stderr.
        output.reopen(None).unwrap();
        assert_eq!(output.path(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn lines_from_threads_do_not_interleave() {
        let dir = temp_dir("threads");
        let log = dir.join("t.log");
        let output = LogOutput::open(Some(&log)).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let output = output.clone();
                std::thread::spawn(move || {
                    let line = format!("{}\n", t.to_string().repeat(1000));
                    for _ in 0..200 {
                        output.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 800);
        for line in text.lines() {
            assert_eq!(line.len(), 1000);
            assert!(line.bytes().all(|b| b == line.as_bytes()[0]), "{line}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
