//! The password and ACL files as loaded from disk: read once (at start, then on every SIGHUP)
//! and shared read-only by every shard through an `Arc`, so checks take no lock.

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::password::PasswordFile;
use crate::acl::Acl;

/// One loaded file: where it came from, a fingerprint of its bytes (to tell a reload that
/// changed it from one that did not) and the parsed contents.
pub struct LoadedFile<T> {
    /// The path it was read from.
    pub path: PathBuf,
    /// A hash of the file's bytes.
    pub fingerprint: u64,
    /// The parsed file, shared by every shard.
    pub data: Arc<T>,
}

impl<T> Clone for LoadedFile<T> {
    fn clone(&self) -> Self {
        LoadedFile {
            path: self.path.clone(),
            fingerprint: self.fingerprint,
            data: Arc::clone(&self.data),
        }
    }
}

impl<T> fmt::Debug for LoadedFile<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedFile")
            .field("path", &self.path)
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

impl<T> PartialEq for LoadedFile<T> {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.fingerprint == other.fingerprint
    }
}

impl<T> Eq for LoadedFile<T> {}

impl<T> LoadedFile<T> {
    /// Reads `path` and parses its text with `parse`; errors are described with the path.
    pub fn load<E: fmt::Display>(
        path: &Path,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<LoadedFile<T>, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let data = parse(&text).map_err(|error| format!("{}: {error}", path.display()))?;
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        Ok(LoadedFile {
            path: path.to_owned(),
            fingerprint: hasher.finish(),
            data: Arc::new(data),
        })
    }

    /// Whether both hold the very same loaded data (not merely equal files).
    pub fn same(a: &Option<LoadedFile<T>>, b: &Option<LoadedFile<T>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(&a.data, &b.data),
            _ => false,
        }
    }
}

/// The loaded `password_file` and `acl_file` of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFiles {
    /// The password file, when `password_file` is set.
    pub passwords: Option<LoadedFile<PasswordFile>>,
    /// The ACL, when `acl_file` is set.
    pub acl: Option<LoadedFile<Acl>>,
}
