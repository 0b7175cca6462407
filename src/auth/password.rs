//! Password files in Mosquitto's format, so a file written by `mosquitto_passwd` works unchanged.
//!
//! One `username:hash` entry per line; blank lines and lines starting with `#` are ignored
//! (and not written back). Surrounding blanks of the username and the hash are trimmed, as
//! Mosquitto does. Hash formats:
//!
//! - `$7$<iterations>$<base64 salt>$<base64 hash>`: PBKDF2-HMAC-SHA512 with a 64-byte output
//!   (`mosquitto_passwd`'s default since 2.0; it writes 101 iterations and a 12-byte salt).
//! - `$6$<base64 salt>$<base64 hash>`: one SHA-512 of the password bytes followed by the salt
//!   bytes (`mosquitto_passwd -H sha512`, the default up to Mosquitto 1.6).
//!
//! - `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<base64 salt>$<base64 hash>`: Argon2id in the
//!   reference implementation's encoded form (libargon2's `argon2id_hash_encoded`), which is
//!   what Mosquitto 2.1 stores for `mosquitto_passwd -H argon2id` (builds with
//!   `WITH_ARGON2=yes`): m=47104, t=1, p=1, a 64-byte salt and a 64-byte hash. There is no
//!   `$8$` prefix in the file: 8 is only Mosquitto's internal number for the type. Any
//!   parameters libargon2 accepts are verified (version 19, or 16 / no `v=`), up to
//!   [`MAX_ARGON2_MEMORY_KIB`] of memory.
//!
//! Base64 is the standard alphabet, with padding for `$7$` and `$6$` and without for
//! `$argon2id$` (as libargon2 writes it). Any other `$…$` type (`$argon2i$`, `$argon2d$`, `$8$`)
//! is refused with [`PasswordFileError::UnsupportedHashType`].
//!
//! `mosquitto_passwd` 2.1 still writes `$7$` by default (its help text says argon2id, its code
//! picks sha512-pbkdf2), so `shardmq passwd` does too; `-H argon2id` writes Mosquitto's
//! argon2id entries.
//!
//! Sans-I/O apart from [`PasswordFile::load`] and [`random_salt`], which read files.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD as BASE64, STANDARD_NO_PAD as BASE64_NO_PAD};
use base64::Engine;
use sha2::{Digest, Sha512};

/// `mosquitto_passwd`'s PBKDF2 iteration count.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// `mosquitto_passwd`'s salt length in bytes.
pub const SALT_LEN: usize = 12;
/// Length of the stored hash for both formats (a SHA-512 output).
const HASH_LEN: usize = 64;
/// Mosquitto 2.1's Argon2id memory cost in KiB (`MOSQ_ARGON2_M`).
pub const ARGON2_MEMORY_KIB: u32 = 47104;
/// Mosquitto 2.1's Argon2id passes (`MOSQ_ARGON2_T`).
pub const ARGON2_PASSES: u32 = 1;
/// Mosquitto 2.1's Argon2id lanes (`MOSQ_ARGON2_P`).
pub const ARGON2_LANES: u32 = 1;
/// Mosquitto 2.1's Argon2id salt and hash length in bytes.
pub const ARGON2_SALT_LEN: usize = 64;
/// The largest Argon2id memory cost accepted in a file (1 GiB): every login with such an entry
/// allocates that much on a shard thread, so a larger one is taken for a mistake.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// Why a password file could not be read or an entry could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is not `username:hash` with a well-formed `$7$`, `$6$` or `$argon2id$` hash.
    #[error("password file line {line}: {reason}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `$<type>$` hash other than `$7$`, `$6$` and `$argon2id$` (such as `$argon2i$`).
    #[error("password file line {line}: unsupported hash type `{hash_type}`")]
    UnsupportedHashType {
        /// 1-based line number.
        line: usize,
        /// The text between the first two `$`.
        hash_type: String,
    },
    /// A username appears on more than one line.
    #[error("password file line {line}: duplicate user `{username}`")]
    DuplicateUser {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The username.
        username: String,
    },
    /// [`PasswordFile::set`] was given a username the file format cannot hold.
    #[error("invalid username {0:?}: must be non-empty, without `:`, control characters, a leading `#` or surrounding blanks")]
    InvalidUsername(String),
    /// [`PasswordFile::set`] was given zero iterations.
    #[error("iteration count must be at least 1")]
    InvalidIterations,
    /// Argon2id hashing failed (its memory could not be allocated).
    #[error("argon2id hashing failed")]
    Argon2,
}

/// The outcome of [`PasswordFile::verify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The password matches.
    Ok,
    /// The user exists; the password does not match.
    WrongPassword,
    /// No entry for the user.
    UnknownUser,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Hash {
    /// `$7$`.
    Pbkdf2Sha512 {
        iterations: u32,
        salt: Vec<u8>,
        hash: [u8; HASH_LEN],
    },
    /// `$6$`.
    Sha512 { salt: Vec<u8>, hash: [u8; HASH_LEN] },
    /// `$argon2id$`.
    Argon2id {
        version: argon2::Version,
        params: argon2::Params,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl Hash {
    fn matches(&self, password: &[u8]) -> bool {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => ct_eq(&pbkdf2_sha512(password, salt, *iterations), hash),
            Hash::Sha512 { salt, hash } => {
                let computed = Sha512::new()
                    .chain_update(password)
                    .chain_update(salt)
                    .finalize();
                ct_eq(computed.as_slice(), hash)
            }
            Hash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => match argon2id(password, salt, *version, params.clone(), hash.len()) {
                Some(computed) => ct_eq(&computed, hash),
                None => false,
            },
        }
    }

    fn encode(&self) -> String {
        match self {
            Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            } => format!(
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(hash)
            ),
            Hash::Sha512 { salt, hash } => {
                format!("$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            Hash::Argon2id {
                version,
                params,
                salt,
                hash,
            } => format!(
                "$argon2id$v={}$m={},t={},p={}${}${}",
                u32::from(*version),
                params.m_cost(),
                params.t_cost(),
                params.p_cost(),
                BASE64_NO_PAD.encode(salt),
                BASE64_NO_PAD.encode(hash)
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    username: String,
    hash: Hash,
    /// The hash text as read (or as written by [`PasswordFile::set`]), written back verbatim.
    encoded: String,
}

/// A parsed password file. Entries keep their file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    entries: Vec<Entry>,
}

impl PasswordFile {
    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<PasswordFile, PasswordFileError> {
        let mut file = PasswordFile::default();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            if raw.starts_with('#') || raw.trim().is_empty() {
                continue;
            }
            let malformed = |reason| PasswordFileError::MalformedLine { line, reason };
            let (username, encoded) = raw
                .split_once(':')
                .ok_or_else(|| malformed("expected `username:hash`"))?;
            let username = username.trim();
            let encoded = encoded.trim();
            if username.is_empty() {
                return Err(malformed("empty username"));
            }
            let hash = parse_hash(encoded, line)?;
            if file.position(username).is_some() {
                return Err(PasswordFileError::DuplicateUser {
                    line,
                    username: username.to_owned(),
                });
            }
            file.entries.push(Entry {
                username: username.to_owned(),
                hash,
                encoded: encoded.to_owned(),
            });
        }
        Ok(file)
    }

    /// Reads and parses a password file.
    pub fn load(path: &Path) -> Result<PasswordFile, PasswordFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PasswordFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        PasswordFile::parse(&text)
    }

    /// Checks `password` for `username`. The hash comparison is constant-time.
    pub fn verify(&self, username: &str, password: &[u8]) -> Verdict {
        match self.position(username) {
            None => Verdict::UnknownUser,
            Some(i) if self.entries[i].hash.matches(password) => Verdict::Ok,
            Some(_) => Verdict::WrongPassword,
        }
    }

    /// Adds `username` or replaces its password, as a `$7$` (PBKDF2-HMAC-SHA512) entry. A new
    /// user goes to the end of the file. Use [`DEFAULT_ITERATIONS`] and [`random_salt`] for
    /// what `mosquitto_passwd` writes.
    pub fn set(
        &mut self,
        username: &str,
        password: &[u8],
        iterations: u32,
        salt: [u8; SALT_LEN],
    ) -> Result<(), PasswordFileError> {
        if !valid_username(username) {
            return Err(PasswordFileError::InvalidUsername(username.to_owned()));
        }
        if iterations == 0 {
            return Err(PasswordFileError::InvalidIterations);
        }
        let hash = Hash::Pbkdf2Sha512 {
            iterations,
            salt: salt.to_vec(),
            hash: pbkdf2_sha512(password, &salt, iterations),
        };
        self.insert(username, hash);
        Ok(())
    }

    /// Adds `username` or replaces its password, as an `$argon2id$` entry with Mosquitto 2.1's
    /// parameters ([`ARGON2_MEMORY_KIB`], [`ARGON2_PASSES`], [`ARGON2_LANES`], a 64-byte hash).
    /// Use [`random_argon2_salt`] for what `mosquitto_passwd -H argon2id` writes.
    pub fn set_argon2id(
        &mut self,
        username: &str,
        password: &[u8],
        salt: [u8; ARGON2_SALT_LEN],
    ) -> Result<(), PasswordFileError> {
        if !valid_username(username) {
            return Err(PasswordFileError::InvalidUsername(username.to_owned()));
        }
        let params = argon2::Params::new(
            ARGON2_MEMORY_KIB,
            ARGON2_PASSES,
            ARGON2_LANES,
            Some(ARGON2_SALT_LEN),
        )
        .map_err(|_| PasswordFileError::Argon2)?;
        let version = argon2::Version::V0x13;
        let hash = argon2id(password, &salt, version, params.clone(), ARGON2_SALT_LEN)
            .ok_or(PasswordFileError::Argon2)?;
        self.insert(
            username,
            Hash::Argon2id {
                version,
                params,
                salt: salt.to_vec(),
                hash,
            },
        );
        Ok(())
    }

    fn insert(&mut self, username: &str, hash: Hash) {
        let entry = Entry {
            username: username.to_owned(),
            encoded: hash.encode(),
            hash,
        };
        match self.position(username) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes `username`; false if it was not there.
    pub fn remove(&mut self, username: &str) -> bool {
        match self.position(username) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// The file text: one `username:hash` line per entry, in file order.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for entry in &self.entries {
            text.push_str(&entry.username);
            text.push(':');
            text.push_str(&entry.encoded);
            text.push('\n');
        }
        text
    }

    /// The usernames, in file order.
    pub fn usernames(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.username.as_str())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, username: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.username == username)
    }
}

/// A fresh salt from `/dev/urandom`.
pub fn random_salt() -> std::io::Result<[u8; SALT_LEN]> {
    let mut salt = [0u8; SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// A fresh 64-byte Argon2id salt from `/dev/urandom`.
pub fn random_argon2_salt() -> std::io::Result<[u8; ARGON2_SALT_LEN]> {
    let mut salt = [0u8; ARGON2_SALT_LEN];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut salt)?;
    Ok(salt)
}

/// Argon2id of `password` with `out_len` bytes of output; `None` if the inputs are out of the
/// algorithm's range (a salt under 8 bytes, an output under 4) or memory cannot be allocated.
fn argon2id(
    password: &[u8],
    salt: &[u8],
    version: argon2::Version,
    params: argon2::Params,
    out_len: usize,
) -> Option<Vec<u8>> {
    let mut out = vec![0u8; out_len];
    argon2::Argon2::new(argon2::Algorithm::Argon2id, version, params)
        .hash_password_into(password, salt, &mut out)
        .ok()?;
    Some(out)
}

/// Parses the part of an `$argon2id$` hash after the type: `v=19$m=..,t=..,p=..$salt$hash` (the
/// `v=` field may be missing, meaning version 16, as libargon2 reads it).
fn parse_argon2id(fields: &[&str], line: usize) -> Result<Hash, PasswordFileError> {
    let malformed = |reason| PasswordFileError::MalformedLine { line, reason };
    let (version, rest) = match fields {
        [v, rest @ ..] if v.starts_with("v=") => {
            let version = match *v {
                "v=19" => argon2::Version::V0x13,
                "v=16" => argon2::Version::V0x10,
                _ => {
                    return Err(malformed(
                        "unsupported argon2 version (expected v=19 or v=16)",
                    ))
                }
            };
            (version, rest)
        }
        rest => (argon2::Version::V0x10, rest),
    };
    let [costs, salt, hash] = rest else {
        return Err(malformed(
            "expected `$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>`",
        ));
    };
    let mut numbers = [0u32; 3];
    let mut parts = costs.split(',');
    for (number, key) in numbers.iter_mut().zip(["m=", "t=", "p="]) {
        *number = parts
            .next()
            .and_then(|part| part.strip_prefix(key))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse().ok())
            .ok_or_else(|| malformed("expected argon2 costs `m=<KiB>,t=<passes>,p=<lanes>`"))?;
    }
    if parts.next().is_some() {
        return Err(malformed(
            "expected argon2 costs `m=<KiB>,t=<passes>,p=<lanes>`",
        ));
    }
    let [memory, passes, lanes] = numbers;
    if memory > MAX_ARGON2_MEMORY_KIB {
        return Err(malformed("argon2 memory cost above 1 GiB"));
    }
    let decode = |field: &str| {
        BASE64_NO_PAD
            .decode(field)
            .map_err(|_| malformed("invalid base64 in argon2 hash (unpadded expected)"))
    };
    let salt = decode(salt)?;
    let hash = decode(hash)?;
    if salt.len() < argon2::MIN_SALT_LEN {
        return Err(malformed("argon2 salt shorter than 8 bytes"));
    }
    let params = argon2::Params::new(memory, passes, lanes, Some(hash.len()))
        .map_err(|_| malformed("argon2 costs or hash length out of range"))?;
    Ok(Hash::Argon2id {
        version,
        params,
        salt,
        hash,
    })
}

fn parse_hash(encoded: &str, line: usize) -> Result<Hash, PasswordFileError> {
    let malformed = |reason| PasswordFileError::MalformedLine { line, reason };
    let rest = encoded
        .strip_prefix('$')
        .ok_or_else(|| malformed("hash does not start with `$`"))?;
    let (hash_type, rest) = rest
        .split_once('$')
        .ok_or_else(|| malformed("hash has no `$<type>$` prefix"))?;
    let fields: Vec<&str> = rest.split('$').collect();
    let decode = |field: &str| {
        BASE64
            .decode(field)
            .map_err(|_| malformed("invalid base64 in hash"))
    };
    let decode_hash = |field: &str| -> Result<[u8; HASH_LEN], PasswordFileError> {
        decode(field)?
            .try_into()
            .map_err(|_| malformed("hash is not 64 bytes"))
    };
    match (hash_type, fields.as_slice()) {
        ("7", [iterations, salt, hash]) => {
            let iterations = iterations
                .parse::<u32>()
                .ok()
                .filter(|&n| n >= 1)
                .ok_or_else(|| malformed("invalid iteration count"))?;
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt: decode(salt)?,
                hash: decode_hash(hash)?,
            })
        }
        ("7", _) => Err(malformed("expected `$7$<iterations>$<salt>$<hash>`")),
        ("6", [salt, hash]) => Ok(Hash::Sha512 {
            salt: decode(salt)?,
            hash: decode_hash(hash)?,
        }),
        ("6", _) => Err(malformed("expected `$6$<salt>$<hash>`")),
        ("argon2id", fields) => parse_argon2id(fields, line),
        (other, _) => Err(PasswordFileError::UnsupportedHashType {
            line,
            hash_type: other.to_owned(),
        }),
    }
}

fn pbkdf2_sha512(password: &[u8], salt: &[u8], iterations: u32) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out);
    out
}

/// What `mosquitto_passwd` and the file format accept as a username that survives a round trip.
fn valid_username(username: &str) -> bool {
    !username.is_empty()
        && !username.starts_with('#')
        && username.trim() == username
        && !username.chars().any(|c| c == ':' || c.is_control())
}

/// Constant-time equality: the time depends on the lengths only, not on where bytes differ.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by `mosquitto_passwd -c -b` (Mosquitto 2.0.11, Debian 12), default `$7$`.
    const MOSQUITTO_PBKDF2: &str = "\
alice:$7$101$Ey+Wnfwd8bLmXXTI$2HsqF2qKKH5LHXDYinOeY/edT6vh0x3VITCbi4WmzB+kiOHNW0l+JciWZCPTyEaXEYbAD2bRjSwPI1nnFKSNZQ==
bob:$7$101$kpA+bdDKAL6NQCg7$EL72FCkorinT7Bg0+p8uf3Mj8R6WryicAZJ/na8RnPfW7uZ3aQYxptyoteUd+vc1EKPOabT8c9SX/+j59mVCow==
carol:$7$101$rcSIreDI7BTrd6uu$lbi8IE8nBUkBJNi5NVXdpu8n1TmFnC8afkRyTpAXU6UqjMXCx6liznif/iGPE/iC93U1L9logQMzpKg2Awa/CA==
dave:$7$101$1kv/OzFf48/o+9LF$OehUJiOGy5B2VvO36JKHqRnbM28NC/p5nxiD3HCZCRnSRqdKykloZxXMZpIG3zQNyJr5LF4rhPiv+EPl3wlNFg==
";

    /// Written by `mosquitto_passwd -H sha512 -c -b` (Mosquitto 2.0.11), `$6$`.
    const MOSQUITTO_SHA512: &str = "\
alice:$6$JYcEhTDQ5E7Dd+5n$J6hBS1T8UkulE+yV3/pefD8K83DtWtY9I1JeilXIA8GF7Xy7Sp0g/xTi9wK3s6+wqvoNEwpzCWneeq9d2HNZOA==
bob:$6$h4TQp+uaJudSfYlV$hXmLKP8dtOkUECiCE+8aG+jA2D3w0iBQ60+ruSrMUkCUh9YYkj2CQ97CtqSiAqx/y/2nj3aEHjkqdxMdFFFY0Q==
";

    /// 1000 iterations and a 16-byte salt, from Python's `hashlib.pbkdf2_hmac("sha512", ...)`
    /// (`mosquitto_passwd` 2.0 has no option for either).
    const OTHER_PARAMS: &str = "erin:$7$1000$c2l4dGVlbiBieXRlIHNsdA==$nBA0fTdcHz1L+6eABKQJ9dKxvC90siKnrJgH32UUn5A8aHxo9QvrpdAWzZ9pbIW6sEwZ5fqt9QFKI1amrSKZ+w==";

    #[test]
    fn verifies_mosquitto_pbkdf2_entries() {
        let file = PasswordFile::parse(MOSQUITTO_PBKDF2).unwrap();
        assert_eq!(file.len(), 4);
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(
            file.verify("bob", b"correct horse battery staple"),
            Verdict::Ok
        );
        assert_eq!(file.verify("carol", "pässwörd".as_bytes()), Verdict::Ok);
        assert_eq!(file.verify("dave", b""), Verdict::Ok);
        assert_eq!(file.verify("alice", b"Secret"), Verdict::WrongPassword);
        assert_eq!(file.verify("alice", b"secret "), Verdict::WrongPassword);
        assert_eq!(file.verify("bob", b"secret"), Verdict::WrongPassword);
        assert_eq!(file.verify("dave", b"x"), Verdict::WrongPassword);
        assert_eq!(file.verify("mallory", b"secret"), Verdict::UnknownUser);
        assert_eq!(file.verify("Alice", b"secret"), Verdict::UnknownUser);
    }

    #[test]
    fn verifies_mosquitto_sha512_entries() {
        let file = PasswordFile::parse(MOSQUITTO_SHA512).unwrap();
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(
            file.verify("bob", b"correct horse battery staple"),
            Verdict::Ok
        );
        assert_eq!(file.verify("alice", b"secret2"), Verdict::WrongPassword);
        assert_eq!(file.verify("carol", b"secret"), Verdict::UnknownUser);
    }

    #[test]
    fn verifies_other_iteration_counts_and_salt_lengths() {
        let file = PasswordFile::parse(OTHER_PARAMS).unwrap();
        assert_eq!(file.verify("erin", b"hunter2"), Verdict::Ok);
        assert_eq!(file.verify("erin", b"hunter3"), Verdict::WrongPassword);
    }

    #[test]
    fn set_writes_what_mosquitto_writes() {
        // Expected hash from Python's hashlib.pbkdf2_hmac("sha512", b"pw", bytes(range(12)), 101).
        let mut file = PasswordFile::default();
        let salt: [u8; 12] = std::array::from_fn(|i| i as u8);
        file.set("u", b"pw", DEFAULT_ITERATIONS, salt).unwrap();
        assert_eq!(
            file.to_text(),
            "u:$7$101$AAECAwQFBgcICQoL$l8zqSPOVOsX6BzXddvHVSUz51tfFGYiwZgYMerEYSK2kmFD86m93us2E5cM8HAComZhsUAqG/9HmFNzmBd+GRQ==\n"
        );
    }

    #[test]
    fn set_then_verify_round_trips() {
        let mut file = PasswordFile::parse(MOSQUITTO_SHA512).unwrap();
        let salt = random_salt().unwrap();
        file.set("carol", b"new password", DEFAULT_ITERATIONS, salt)
            .unwrap();
        assert_eq!(file.verify("carol", b"new password"), Verdict::Ok);
        assert_eq!(
            file.verify("carol", b"new passwore"),
            Verdict::WrongPassword
        );

        // Replacing a password keeps the entry's place and switches it to `$7$`.
        file.set("alice", b"changed", 5, random_salt().unwrap())
            .unwrap();
        assert_eq!(file.verify("alice", b"changed"), Verdict::Ok);
        assert_eq!(file.verify("alice", b"secret"), Verdict::WrongPassword);
        assert_eq!(
            file.usernames().collect::<Vec<_>>(),
            ["alice", "bob", "carol"]
        );

        let text = file.to_text();
        assert!(text.starts_with("alice:$7$5$"));
        let reparsed = PasswordFile::parse(&text).unwrap();
        assert_eq!(reparsed, file);
        assert_eq!(reparsed.verify("carol", b"new password"), Verdict::Ok);
        assert_eq!(
            reparsed.verify("bob", b"correct horse battery staple"),
            Verdict::Ok
        );
    }

    #[test]
    fn set_rejects_bad_usernames_and_iterations() {
        let mut file = PasswordFile::default();
        for bad in ["", "a:b", "#x", " a", "a ", "a\nb"] {
            assert!(
                matches!(
                    file.set(bad, b"pw", 1, [0; 12]),
                    Err(PasswordFileError::InvalidUsername(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            file.set("a", b"pw", 0, [0; 12]),
            Err(PasswordFileError::InvalidIterations)
        ));
        assert!(file.is_empty());
    }

    #[test]
    fn remove() {
        let mut file = PasswordFile::parse(MOSQUITTO_PBKDF2).unwrap();
        assert!(file.remove("bob"));
        assert!(!file.remove("bob"));
        assert_eq!(
            file.verify("bob", b"correct horse battery staple"),
            Verdict::UnknownUser
        );
        assert_eq!(
            file.usernames().collect::<Vec<_>>(),
            ["alice", "carol", "dave"]
        );
        assert!(!file.to_text().contains("bob:"));
    }

    #[test]
    fn to_text_keeps_entries_in_file_order_verbatim() {
        let file = PasswordFile::parse(MOSQUITTO_PBKDF2).unwrap();
        assert_eq!(file.to_text(), MOSQUITTO_PBKDF2);
        assert_eq!(PasswordFile::default().to_text(), "");
    }

    #[test]
    fn comments_blank_lines_crlf_and_blanks_are_ignored() {
        let text = format!(
            "# users\r\n\r\n   \n  {}\r\n#bob:not a hash\n\t\n",
            OTHER_PARAMS.replacen(':', " : ", 1)
        );
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.usernames().collect::<Vec<_>>(), ["erin"]);
        assert_eq!(file.verify("erin", b"hunter2"), Verdict::Ok);
        assert_eq!(file.to_text(), format!("{OTHER_PARAMS}\n"));
        assert!(PasswordFile::parse("").unwrap().is_empty());
        assert!(PasswordFile::parse("# only a comment\n\n")
            .unwrap()
            .is_empty());
    }

    fn malformed_line(text: &str) -> usize {
        match PasswordFile::parse(text) {
            Err(PasswordFileError::MalformedLine { line, .. }) => line,
            other => panic!("{text:?}: expected MalformedLine, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        let good = OTHER_PARAMS;
        assert_eq!(
            malformed_line(&format!("# c\n{good}\n\nno colon here\n")),
            4
        );
        assert_eq!(malformed_line("alice:\n"), 1);
        assert_eq!(malformed_line(&format!("{good}\n:$6$AAAA$AAAA\n")), 2);
        assert_eq!(malformed_line("a:plaintext\n"), 1);
        assert_eq!(malformed_line("a:$7\n"), 1);
        assert_eq!(malformed_line("a:$7$101$AAAA\n"), 1);
        assert_eq!(malformed_line("a:$7$x$AAAA$AAAA\n"), 1);
        assert_eq!(malformed_line("a:$7$0$AAAA$AAAA\n"), 1);
        assert_eq!(malformed_line("a:$6$AAAA$AAAA$AAAA\n"), 1);
        assert_eq!(malformed_line("a:$6$!!!!$AAAA\n"), 1);
        // The hash must be 64 bytes: an empty one would otherwise accept nothing or anything.
        assert_eq!(malformed_line("a:$6$AAAA$\n"), 1);
        assert_eq!(malformed_line("a:$6$AAAA$AAAA\n"), 1);
        let err = PasswordFile::parse("\n\nx\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn unsupported_hash_types_and_duplicates_are_errors() {
        match PasswordFile::parse("# c\na:$8$whatever\n") {
            Err(PasswordFileError::UnsupportedHashType { line: 2, hash_type }) => {
                assert_eq!(hash_type, "8")
            }
            other => panic!("{other:?}"),
        }
        // Only the `id` variant of Argon2 (what Mosquitto writes).
        match PasswordFile::parse("a:$argon2i$v=19$m=47104,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g\n") {
            Err(PasswordFileError::UnsupportedHashType { line: 1, hash_type }) => {
                assert_eq!(hash_type, "argon2i")
            }
            other => panic!("{other:?}"),
        }
        let dup = format!("{OTHER_PARAMS}\n{OTHER_PARAMS}\n");
        assert!(matches!(
            PasswordFile::parse(&dup),
            Err(PasswordFileError::DuplicateUser { line: 2, .. })
        ));
    }

    #[test]
    fn load_reads_a_file() {
        let path = std::env::temp_dir().join(format!("shardmq-pwfile-{}", std::process::id()));
        std::fs::write(&path, MOSQUITTO_SHA512).unwrap();
        let file = PasswordFile::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert!(matches!(
            PasswordFile::load(&path),
            Err(PasswordFileError::Io { .. })
        ));
    }

    #[test]
    fn constant_time_compare() {
        assert!(ct_eq(b"", b""));
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"bbc"));
        assert!(!ct_eq(b"abc", b"ab"));
        assert!(!ct_eq(b"", b"a"));
        let a = [0x5a; 64];
        for i in 0..64 {
            for bit in 0..8 {
                let mut b = a;
                b[i] ^= 1 << bit;
                assert!(!ct_eq(&a, &b));
            }
        }
        assert!(ct_eq(&a, &[0x5a; 64]));
    }

    /// Written by the reference Argon2 implementation (libargon2, the library Mosquitto 2.1
    /// links; Debian's `argon2` 0~20171227 CLI) with Mosquitto 2.1's parameters:
    /// `printf %s PASSWORD | argon2 SALT -id -t 1 -k 47104 -p 1 -l 64 -e`, with 64-byte salts.
    const LIBARGON2_MOSQUITTO_PARAMS: &str = "\
alice:$argon2id$v=19$m=47104,t=1,p=1$bW9zcXVpdHRvLTIuMS1zaXh0eS1mb3VyLWJ5dGUtc2FsdC1mb3ItYW4taW5kZXBlbmRlbnQtdmVjdG9yLW9rIQ$olig9EOZc8F2EYtc/kdI8vq4eA/SaC2goHKeETPNN79wwvtPadxImDlhBCKrP+W9uTK1PWCr9NcSkwjIwb76zw
bob:$argon2id$v=19$m=47104,t=1,p=1$MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg$olnrIzy5IaSoxoQnqrXzTHsWVNfHJtOqVR6qMbgZXTKXPYMnIYVf2cmj8pSfLorSfP5Ouo2/dPnfzz13h30ZTA
";

    /// The same tool with other parameters: `-t 2 -k 4096 -p 2 -l 32` (salt "sixteen byte
    /// slt"), and version 16 (`-t 3 -k 64 -p 1 -l 16 -v 10`, salt "eight-by").
    const LIBARGON2_OTHER_PARAMS: &str = "\
carol:$argon2id$v=19$m=4096,t=2,p=2$c2l4dGVlbiBieXRlIHNsdA$Mk9DtDhjkUxzu940n2o7EJRsegOAtMlABAlhlGE1oe4
dave:$argon2id$v=16$m=64,t=3,p=1$ZWlnaHQtYnk$6Jm3Sezub8YygZNK4o+VQw
";

    #[test]
    fn verifies_libargon2_entries_with_mosquitto_params() {
        let file = PasswordFile::parse(LIBARGON2_MOSQUITTO_PARAMS).unwrap();
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(file.verify("alice", b"secreT"), Verdict::WrongPassword);
        assert_eq!(file.verify("alice", b""), Verdict::WrongPassword);
        assert_eq!(
            file.verify("bob", b"correct horse battery staple"),
            Verdict::Ok
        );
        assert_eq!(file.verify("bob", b"secret"), Verdict::WrongPassword);
        assert_eq!(file.verify("carol", b"secret"), Verdict::UnknownUser);
        // Written back verbatim.
        assert_eq!(file.to_text(), LIBARGON2_MOSQUITTO_PARAMS);
    }

    #[test]
    fn verifies_libargon2_entries_with_other_params_and_version_16() {
        let file = PasswordFile::parse(LIBARGON2_OTHER_PARAMS).unwrap();
        assert_eq!(file.verify("carol", "pässwörd".as_bytes()), Verdict::Ok);
        assert_eq!(file.verify("carol", b"passwort"), Verdict::WrongPassword);
        assert_eq!(file.verify("dave", b"hunter2"), Verdict::Ok);
        assert_eq!(file.verify("dave", b"hunter3"), Verdict::WrongPassword);
    }

    #[test]
    fn argon2id_entries_mix_with_the_other_formats() {
        let text = format!("{MOSQUITTO_SHA512}{LIBARGON2_OTHER_PARAMS}{OTHER_PARAMS}\n");
        let file = PasswordFile::parse(&text).unwrap();
        assert_eq!(file.len(), 5);
        assert_eq!(file.verify("alice", b"secret"), Verdict::Ok);
        assert_eq!(file.verify("dave", b"hunter2"), Verdict::Ok);
        assert_eq!(file.verify("erin", b"hunter2"), Verdict::Ok);
    }

    #[test]
    fn set_argon2id_writes_mosquittos_format() {
        let mut file = PasswordFile::default();
        // The salt libargon2 was given for alice above: the same hash must come out.
        let salt: [u8; ARGON2_SALT_LEN] =
            *b"mosquitto-2.1-sixty-four-byte-salt-for-an-independent-vector-ok!";
        file.set_argon2id("alice", b"secret", salt).unwrap();
        let expected = LIBARGON2_MOSQUITTO_PARAMS.lines().next().unwrap();
        assert_eq!(file.to_text(), format!("{expected}\n"));

        let salt = random_argon2_salt().unwrap();
        file.set_argon2id("bob", b"pw", salt).unwrap();
        let text = file.to_text();
        let bob = text.lines().nth(1).unwrap();
        assert!(
            bob.starts_with("bob:$argon2id$v=19$m=47104,t=1,p=1$"),
            "{bob}"
        );
        let reparsed = PasswordFile::parse(&text).unwrap();
        assert_eq!(reparsed.verify("bob", b"pw"), Verdict::Ok);
        assert_eq!(reparsed.verify("bob", b"pW"), Verdict::WrongPassword);
        assert!(matches!(
            file.set_argon2id("a:b", b"pw", salt),
            Err(PasswordFileError::InvalidUsername(_))
        ));
    }

    #[test]
    fn malformed_argon2id_entries_are_errors() {
        let salt = "c2l4dGVlbiBieXRlIHNsdA";
        let hash = "Mk9DtDhjkUxzu940n2o7EJRsegOAtMlABAlhlGE1oe4";
        for bad in [
            format!("a:$argon2id$v=19$m=4096,t=2$ {salt}${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=2${salt}"),
            format!("a:$argon2id$v=18$m=4096,t=2,p=2${salt}${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=2,x=1${salt}${hash}"),
            format!("a:$argon2id$v=19$t=2,m=4096,p=2${salt}${hash}"),
            format!("a:$argon2id$v=19$m=+4096,t=2,p=2${salt}${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=0,p=2${salt}${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=0${salt}${hash}"),
            format!("a:$argon2id$v=19$m=8,t=2,p=2${salt}${hash}"),
            format!("a:$argon2id$v=19$m=2097152,t=1,p=1${salt}${hash}"),
            // Padded base64 is not what libargon2 writes (nor reads).
            format!("a:$argon2id$v=19$m=4096,t=2,p=2${salt}==${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=2$c2hvcnQ${hash}"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=2${salt}$aGFz"),
            format!("a:$argon2id$v=19$m=4096,t=2,p=2${salt}$"),
        ] {
            assert_eq!(malformed_line(&bad), 1, "{bad}");
        }
    }

    #[test]
    fn random_salts_differ() {
        assert_ne!(random_salt().unwrap(), random_salt().unwrap());
    }
}
