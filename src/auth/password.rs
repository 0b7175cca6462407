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
//! Base64 is the standard alphabet with padding. Argon2id hashes (Mosquitto 2.1) and any other
//! `$…$` type are refused with [`PasswordFileError::UnsupportedHashType`].
//!
//! Sans-I/O apart from [`PasswordFile::load`] and [`random_salt`], which read files.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha512};

/// `mosquitto_passwd`'s PBKDF2 iteration count.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// `mosquitto_passwd`'s salt length in bytes.
pub const SALT_LEN: usize = 12;
/// Length of the stored hash for both formats (a SHA-512 output).
const HASH_LEN: usize = 64;

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
    /// A line is not `username:hash` with a well-formed `$7$` or `$6$` hash.
    #[error("password file line {line}: {reason}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A `$<type>$` hash other than `$7$` and `$6$` (such as `$8$` or `$argon2id$`).
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
        let entry = Entry {
            username: username.to_owned(),
            encoded: hash.encode(),
            hash,
        };
        match self.position(username) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
        Ok(())
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
        match PasswordFile::parse("a:$argon2id$v=19$m=47104,t=1,p=1$c2FsdA$aGFzaA\n") {
            Err(PasswordFileError::UnsupportedHashType { line: 1, hash_type }) => {
                assert_eq!(hash_type, "argon2id")
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

    #[test]
    fn random_salts_differ() {
        assert_ne!(random_salt().unwrap(), random_salt().unwrap());
    }
}
