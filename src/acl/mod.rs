//! Access control lists in Mosquitto's `acl_file` format.
//!
//! Pure code: [`Acl::parse`] turns the text of an ACL file into compiled rules and the `may_*`
//! methods answer access questions without I/O ([`Acl::load`] is the only function that reads a
//! file).
//!
//! ## File format
//! ```text
//! # comment (a line whose first non-blank character is `#`)
//! topic read $SYS/#            # before any `user` line: clients without a username
//! user roger                   # the rest of the line is the username (may contain spaces)
//! topic foo/bar                # access omitted: readwrite
//! topic deny foo/bar/secret
//! pattern write sensor/%u/data # every client, wherever the line appears
//! pattern readwrite clients/%c/#
//! ```
//! After the keyword, a line with a single word is `topic <topic>` (readwrite); with more words
//! the first must be `read`, `write`, `readwrite` or `deny` and the rest of the line (trimmed) is
//! the topic, which may then contain spaces. As in Mosquitto, `topic read` is therefore the topic
//! `read` with readwrite access.
//!
//! ## Semantics
//! - Once an ACL is loaded everything is denied unless a rule grants it. An empty file denies all.
//! - The rules that apply to a client are: the `topic` rules of its username (or the anonymous
//!   rules when it has none) plus every `pattern` rule. `%c` is replaced by the client id and `%u`
//!   by the username; a pattern that uses `%u` does not apply to a client without a username.
//! - A matching `deny` rule wins over any grant (Mosquitto only gives deny precedence within the
//!   user rules and within the patterns separately; here a deny from either list wins).
//! - A `read` grant allows receiving (delivery), `write` allows publishing, `readwrite` both.
//! - An ACL topic is a filter matched against the topic name with the MQTT rules, so `#` and
//!   `+/...` never match `$SYS/...` (or any `$` topic): those must be granted explicitly.
//! - As in Mosquitto, when the file has any `pattern` line, a client whose username or client id
//!   contains `+` or `#` could widen a pattern by substitution; Mosquitto then refuses the
//!   pattern rules. Here such a client is denied everything (stricter: Mosquitto still lets its
//!   `topic` rules grant). A `/` in a username or client id is allowed, as in Mosquitto.
//! - SUBSCRIBE: see [`Acl::may_subscribe`]. (Mosquitto's own `acl_file` plugin does not check
//!   SUBSCRIBE at all and filters each delivery; the check here is stricter.)

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use core_router::topic::{parse_shared, validate_topic_filter, TopicError};

mod hash;
mod matching;
mod rules;

use hash::FxHashMap;
use matching::{covers, intersects, pieces_match, rule_matches};
use rules::{first_level, Access, LevelKey, Pattern, RuleSet, Want, Who};

/// Why an ACL file was refused. Line numbers start at 1.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The first word of a line is not `user`, `topic` or `pattern`.
    #[error("acl line {line}: unknown keyword `{keyword}`")]
    UnknownKeyword {
        /// Line number.
        line: usize,
        /// The offending word.
        keyword: String,
    },
    /// The access word is not `read`, `write`, `readwrite` or `deny`.
    #[error(
        "acl line {line}: invalid access `{access}` (expected read, write, readwrite or deny)"
    )]
    BadAccess {
        /// Line number.
        line: usize,
        /// The offending word.
        access: String,
    },
    /// `topic` or `pattern` without a topic.
    #[error("acl line {line}: missing topic")]
    MissingTopic {
        /// Line number.
        line: usize,
    },
    /// More than 2^32 - 4 `user` blocks with distinct names.
    #[error("acl line {line}: too many users")]
    TooManyUsers {
        /// Line number.
        line: usize,
    },
    /// `user` without a username.
    #[error("acl line {line}: missing username")]
    MissingUsername {
        /// Line number.
        line: usize,
    },
    /// The topic is not a valid topic filter.
    #[error("acl line {line}: invalid topic `{topic}`: {source}")]
    InvalidTopic {
        /// Line number.
        line: usize,
        /// The topic as written.
        topic: String,
        /// What is wrong with it.
        source: TopicError,
    },
    /// The file could not be read.
    #[error("reading acl file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Outcome of [`Acl::may_subscribe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeCheck {
    /// The subscription must be refused.
    Denied,
    /// Every topic the filter can match may be delivered: no per-message check needed.
    Allowed,
    /// The subscription is allowed but some topics it matches may be denied: check
    /// [`Acl::may_receive`] for each message delivered through it.
    AllowedCheckEachMessage,
}

/// A parsed ACL file. Cheap to share (`Sync`, no interior mutability).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: RuleSet<Box<str>>,
    /// Each user's rules; `users` maps a username to its index here.
    user_sets: Vec<RuleSet<Box<str>>>,
    users: FxHashMap<Box<str>, u32>,
    patterns: RuleSet<Pattern>,
    has_patterns: bool,
    /// Tells this `Acl` (and its clones) from every other one parsed in this process, so a
    /// [`ClientAcl`] made from another (a reload) is never used with it. 0 only for
    /// `Acl::default()` (no rules: every default `Acl` answers alike). 32 bits, to keep
    /// [`ClientAcl`] (one per session) at 12 bytes: it takes 2^32 parses in one process to
    /// reuse a value, and the shard prepares every session anew whenever the ACL is replaced,
    /// so this check is a second line of defence.
    generation: u32,
}

/// What [`Acl::client_acl`] works out once for a client (a username and client id) so that
/// its publish and delivery checks ([`Acl::may_publish_with`], [`Acl::may_receive_with`]) skip
/// the work that depends only on the client: finding the user's rules (hashing the username)
/// and looking for `+`/`#` in the identity. Plain data, a few words: no rules are copied, so
/// it costs the same for every client whatever the file's size. Made for one `Acl`: checks of
/// another `Acl` (after a reload) ignore it and evaluate from scratch, with the same verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAcl {
    generation: u32,
    /// A [`ClientRules`], packed in 32 non-zero bits so that `Option<ClientAcl>` (kept with
    /// every session) is 8 bytes.
    rules: NonZeroU32,
}

/// The users [`ClientRules::User`] can name (the rest of `u32` encodes the other variants).
const MAX_USERS: u32 = u32::MAX - 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientRules {
    /// A username or client id with `+` or `#` while the file has patterns.
    DenyAll,
    /// The anonymous rules plus the patterns.
    Anonymous,
    /// A user's rules (index into `user_sets`) plus the patterns.
    User(u32),
    /// A user the file names no rules for: only the patterns.
    PatternsOnly,
}

impl ClientRules {
    fn pack(self) -> NonZeroU32 {
        let packed = match self {
            ClientRules::DenyAll => u32::MAX,
            ClientRules::Anonymous => u32::MAX - 1,
            ClientRules::PatternsOnly => u32::MAX - 2,
            // `Acl::parse` numbers at most MAX_USERS users: index + 1 < u32::MAX - 2.
            ClientRules::User(index) => index.saturating_add(1).min(u32::MAX - 3),
        };
        NonZeroU32::new(packed).unwrap_or(NonZeroU32::MIN)
    }

    fn unpack(packed: NonZeroU32) -> ClientRules {
        match packed.get() {
            u32::MAX => ClientRules::DenyAll,
            0xffff_fffe => ClientRules::Anonymous,
            0xffff_fffd => ClientRules::PatternsOnly,
            user => ClientRules::User(user - 1),
        }
    }
}

/// Source of [`Acl::generation`] values (0 is `Acl::default()`'s).
static NEXT_GENERATION: AtomicU32 = AtomicU32::new(1);

impl Acl {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut acl = Acl::default();
        let mut user: Option<Box<str>> = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(trimmed);
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(AclError::MissingUsername { line });
                    }
                    user = Some(rest.into());
                }
                "topic" | "pattern" => {
                    if rest.is_empty() {
                        return Err(AclError::MissingTopic { line });
                    }
                    let (first, after) = split_word(rest);
                    let (access, topic) = if after.is_empty() {
                        (Access::ReadWrite, first)
                    } else {
                        let access = Access::parse(first).ok_or_else(|| AclError::BadAccess {
                            line,
                            access: first.to_owned(),
                        })?;
                        (access, after)
                    };
                    validate_topic_filter(topic).map_err(|source| AclError::InvalidTopic {
                        line,
                        topic: topic.to_owned(),
                        source,
                    })?;
                    if keyword == "pattern" {
                        let pattern = Pattern::compile(topic);
                        let first = pattern.literal_first_level().map(Box::<str>::from);
                        acl.patterns.add(first.as_deref(), access, pattern);
                        acl.has_patterns = true;
                    } else {
                        let lists = match &user {
                            None => &mut acl.anonymous,
                            Some(name) => {
                                let next = u32::try_from(acl.user_sets.len())
                                    .ok()
                                    .filter(|&next| next < MAX_USERS)
                                    .ok_or(AclError::TooManyUsers { line })?;
                                let index = *acl.users.entry(name.clone()).or_insert(next);
                                if index == next {
                                    acl.user_sets.push(RuleSet::default());
                                }
                                &mut acl.user_sets[index as usize]
                            }
                        };
                        lists.add(Some(first_level(topic)), access, topic.into());
                    }
                }
                other => {
                    return Err(AclError::UnknownKeyword {
                        line,
                        keyword: other.to_owned(),
                    })
                }
            }
        }
        acl.anonymous.finish();
        acl.user_sets.iter_mut().for_each(RuleSet::finish);
        acl.patterns.finish();
        acl.generation = match NEXT_GENERATION.fetch_add(1, Ordering::Relaxed) {
            // Wrapped around: 0 stays `Acl::default()`'s.
            0 => NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            generation => generation,
        };
        Ok(acl)
    }

    /// Identifies this `Acl` (see [`ClientAcl`]): clones share it, every parse gets a new one.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The per-client part of the checks, worked out once (at CONNECT, and again when the ACL
    /// is replaced): see [`ClientAcl`].
    pub fn client_acl(&self, username: Option<&str>, client_id: &str) -> ClientAcl {
        let who = Who {
            username,
            client_id,
        };
        let rules = if self.dangerous(&who) {
            ClientRules::DenyAll
        } else {
            match username {
                None => ClientRules::Anonymous,
                Some(name) => match self.users.get(name) {
                    Some(&index) => ClientRules::User(index),
                    None => ClientRules::PatternsOnly,
                },
            }
        };
        ClientAcl {
            generation: self.generation,
            rules: rules.pack(),
        }
    }

    /// [`Acl::may_publish`] with the client's [`ClientAcl`] (made by [`Acl::client_acl`] for
    /// the same `username` and `client_id`). A `ClientAcl` of another `Acl` is ignored.
    pub fn may_publish_with(
        &self,
        client: &ClientAcl,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
    ) -> bool {
        self.check_with(client, username, client_id, topic, Want::Write)
    }

    /// [`Acl::may_receive`] with the client's [`ClientAcl`] (see [`Acl::may_publish_with`]).
    pub fn may_receive_with(
        &self,
        client: &ClientAcl,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
    ) -> bool {
        self.check_with(client, username, client_id, topic, Want::Read)
    }

    fn check_with(
        &self,
        client: &ClientAcl,
        username: Option<&str>,
        client_id: &str,
        topic: &str,
        want: Want,
    ) -> bool {
        let who = Who {
            username,
            client_id,
        };
        if client.generation != self.generation {
            return self.check(who, topic, want);
        }
        let topic_rules = match ClientRules::unpack(client.rules) {
            ClientRules::DenyAll => return false,
            ClientRules::Anonymous => Some(&self.anonymous),
            ClientRules::User(index) => self.user_sets.get(index as usize),
            ClientRules::PatternsOnly => None,
        };
        self.evaluate(topic_rules, who, topic, want)
    }

    /// Reads and parses an ACL file.
    pub fn load(path: &Path) -> Result<Acl, AclError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclError::Io {
            path: path.to_owned(),
            source,
        })?;
        Acl::parse(&text)
    }

    /// May this client publish to the topic name `topic`?
    pub fn may_publish(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(
            Who {
                username,
                client_id,
            },
            topic,
            Want::Write,
        )
    }

    /// May this client receive a message published to the topic name `topic` (read access)?
    /// Call it at delivery for subscriptions that [`Acl::may_subscribe`] classified
    /// [`SubscribeCheck::AllowedCheckEachMessage`], and for retained messages sent on subscribe
    /// through such filters.
    pub fn may_receive(&self, username: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(
            Who {
                username,
                client_id,
            },
            topic,
            Want::Read,
        )
    }

    /// May this client subscribe to `filter` (`$share/{group}/` is stripped first)?
    ///
    /// - [`SubscribeCheck::Denied`] unless one read grant covers the whole filter (every topic
    ///   the filter can match is matched by the grant: ACL `foo/#` covers `foo/+/bar` and
    ///   `foo/#`; ACL `foo/+` covers `foo/x` and `foo/+` but not `foo/#`). Grants are not
    ///   combined: `foo/a` and `foo/b` together do not cover `foo/+`. Also denied when a deny
    ///   rule covers the whole filter (nothing could ever be delivered), or the filter is invalid.
    /// - [`SubscribeCheck::AllowedCheckEachMessage`] when some deny rule could match a topic the
    ///   filter matches (ACL `foo/#` + `deny foo/secret`, filter `foo/#`).
    /// - [`SubscribeCheck::Allowed`] otherwise.
    pub fn may_subscribe(
        &self,
        username: Option<&str>,
        client_id: &str,
        filter: &str,
    ) -> SubscribeCheck {
        let filter = match parse_shared(filter) {
            None => filter,
            Some(Ok(shared)) => shared.filter,
            Some(Err(_)) => return SubscribeCheck::Denied,
        };
        if validate_topic_filter(filter).is_err() {
            return SubscribeCheck::Denied;
        }
        let who = Who {
            username,
            client_id,
        };
        if self.dangerous(&who) {
            return SubscribeCheck::Denied;
        }
        let topic_rules = self.topic_rules(username);
        let patterns = self.patterns();

        let mut overlaps_deny = false;
        let denies = topic_rules
            .into_iter()
            .flat_map(RuleSet::all)
            .flat_map(|l| l.deny.iter().map(|r| std::borrow::Cow::Borrowed(&**r)))
            .chain(
                patterns
                    .into_iter()
                    .flat_map(RuleSet::all)
                    .flat_map(|l| l.deny.iter())
                    .filter(|p| applies(p, &who))
                    .map(|p| std::borrow::Cow::Owned(p.substitute(&who))),
            );
        for deny in denies {
            if covers(&deny, filter) {
                return SubscribeCheck::Denied;
            }
            overlaps_deny |= intersects(&deny, filter);
        }

        let granted = topic_rules
            .into_iter()
            .flat_map(RuleSet::all)
            .flat_map(|l| l.read.iter())
            .any(|rule| covers(rule, filter))
            || patterns
                .into_iter()
                .flat_map(RuleSet::all)
                .flat_map(|l| l.read.iter())
                .filter(|p| applies(p, &who))
                .any(|p| covers(&p.substitute(&who), filter));
        match (granted, overlaps_deny) {
            (false, _) => SubscribeCheck::Denied,
            (true, true) => SubscribeCheck::AllowedCheckEachMessage,
            (true, false) => SubscribeCheck::Allowed,
        }
    }

    /// The publish/delivery check: only the rules in the topic's first-level buckets are
    /// tried (see the `rules` module for why that gives the same verdicts as trying all).
    fn check(&self, who: Who<'_>, topic: &str, want: Want) -> bool {
        if self.dangerous(&who) {
            return false;
        }
        self.evaluate(self.topic_rules(who.username), who, topic, want)
    }

    /// The verdict from the client's topic rules (`None`: it has none) and the patterns, for a
    /// client that is not [`Acl::dangerous`].
    fn evaluate(
        &self,
        topic_rules: Option<&RuleSet<Box<str>>>,
        who: Who<'_>,
        topic: &str,
        want: Want,
    ) -> bool {
        let key = LevelKey::of_topic(topic);
        let topic_rules = topic_rules.map_or([None, None], |set| set.candidates(key));
        let patterns = self
            .patterns()
            .map_or([None, None], |set| set.candidates(key));
        let rule_matches = |rule: &str| rule_matches(rule, topic);
        let pattern_matches = |p: &Pattern| applies(p, &who) && pieces_match(p.bytes(&who), topic);
        let denied = topic_rules
            .iter()
            .flatten()
            .any(|l| l.deny.iter().any(|r| rule_matches(r)))
            || patterns
                .iter()
                .flatten()
                .any(|l| l.deny.iter().any(pattern_matches));
        if denied {
            return false;
        }
        topic_rules
            .iter()
            .flatten()
            .any(|l| l.grants(want).iter().any(|r| rule_matches(r)))
            || patterns
                .iter()
                .flatten()
                .any(|l| l.grants(want).iter().any(pattern_matches))
    }

    /// Mosquitto refuses pattern ACLs for a username or client id containing `+` or `#`
    /// (substituting them would widen the pattern); such a client is denied everything.
    fn dangerous(&self, who: &Who<'_>) -> bool {
        let bad = |s: &str| s.bytes().any(|b| b == b'+' || b == b'#');
        self.has_patterns && (who.username.is_some_and(bad) || bad(who.client_id))
    }

    fn topic_rules(&self, username: Option<&str>) -> Option<&RuleSet<Box<str>>> {
        match username {
            None => Some(&self.anonymous),
            Some(name) => self
                .users
                .get(name)
                .and_then(|&index| self.user_sets.get(index as usize)),
        }
    }

    fn patterns(&self) -> Option<&RuleSet<Pattern>> {
        self.has_patterns.then_some(&self.patterns)
    }
}

/// A pattern using `%u` does not apply to a client without a username.
fn applies(pattern: &Pattern, who: &Who<'_>) -> bool {
    !pattern.uses_username || who.username.is_some()
}

/// Splits off the first word (space- or tab-separated); the rest is trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.find([' ', '\t']) {
        Some(at) => (&s[..at], s[at..].trim()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests;
