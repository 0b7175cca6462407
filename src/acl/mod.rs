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

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use core_router::topic::{filter_matches, parse_shared, validate_topic_filter, TopicError};

mod matching;
mod rules;

use matching::{covers, intersects, pieces_match};
use rules::{first_level, Access, Pattern, RuleSet, Want, Who};

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
    users: HashMap<Box<str>, RuleSet<Box<str>>>,
    patterns: RuleSet<Pattern>,
    has_patterns: bool,
}

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
                            Some(name) => acl.users.entry(name.clone()).or_default(),
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
        Ok(acl)
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
        let topic_rules = self
            .topic_rules(who.username)
            .map_or([None, None], |set| set.candidates(topic));
        let patterns = self
            .patterns()
            .map_or([None, None], |set| set.candidates(topic));
        let rule_matches = |rule: &str| filter_matches(rule, topic);
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
            Some(name) => self.users.get(name),
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
