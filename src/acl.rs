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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn parse(word: &str) -> Option<Access> {
        match word {
            "read" => Some(Access::Read),
            "write" => Some(Access::Write),
            "readwrite" => Some(Access::ReadWrite),
            "deny" => Some(Access::Deny),
            _ => None,
        }
    }
}

/// Rules of one kind, split by access so a check only scans the relevant lists.
#[derive(Debug, Clone)]
struct Lists<R> {
    deny: Vec<R>,
    read: Vec<R>,
    write: Vec<R>,
}

impl<R> Default for Lists<R> {
    fn default() -> Self {
        Lists {
            deny: Vec::new(),
            read: Vec::new(),
            write: Vec::new(),
        }
    }
}

impl<R: Clone> Lists<R> {
    fn add(&mut self, access: Access, rule: R) {
        match access {
            Access::Deny => self.deny.push(rule),
            Access::Read => self.read.push(rule),
            Access::Write => self.write.push(rule),
            Access::ReadWrite => {
                self.read.push(rule.clone());
                self.write.push(rule);
            }
        }
    }

    fn grants(&self, want: Want) -> &[R] {
        match want {
            Want::Read => &self.read,
            Want::Write => &self.write,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Read,
    Write,
}

/// One piece of a compiled `pattern` topic.
#[derive(Debug, Clone)]
enum Piece {
    Lit(Box<str>),
    Username,
    ClientId,
}

/// A compiled `pattern` rule.
#[derive(Debug, Clone)]
struct Pattern {
    pieces: Box<[Piece]>,
    uses_username: bool,
}

impl Pattern {
    fn compile(topic: &str) -> Pattern {
        let mut pieces = Vec::new();
        let mut uses_username = false;
        let mut lit_start = 0;
        let bytes = topic.as_bytes();
        let mut i = 0;
        while i + 1 < bytes.len() {
            let piece = match (bytes[i], bytes[i + 1]) {
                (b'%', b'u') => Piece::Username,
                (b'%', b'c') => Piece::ClientId,
                _ => {
                    i += 1;
                    continue;
                }
            };
            if lit_start < i {
                pieces.push(Piece::Lit(topic[lit_start..i].into()));
            }
            uses_username |= matches!(piece, Piece::Username);
            pieces.push(piece);
            i += 2;
            lit_start = i;
        }
        if lit_start < topic.len() {
            pieces.push(Piece::Lit(topic[lit_start..].into()));
        }
        Pattern {
            pieces: pieces.into(),
            uses_username,
        }
    }

    /// The bytes of the substituted filter, without allocating.
    fn bytes<'a>(&'a self, who: &'a Who<'a>) -> impl Iterator<Item = u8> + 'a {
        self.pieces.iter().flat_map(move |piece| {
            let s: &str = match piece {
                Piece::Lit(s) => s,
                Piece::Username => who.username.unwrap_or(""),
                Piece::ClientId => who.client_id,
            };
            s.bytes()
        })
    }

    fn substitute(&self, who: &Who<'_>) -> String {
        String::from_utf8(self.bytes(who).collect()).expect("pieces of UTF-8 strings")
    }
}

#[derive(Debug, Clone, Copy)]
struct Who<'a> {
    username: Option<&'a str>,
    client_id: &'a str,
}

/// A parsed ACL file. Cheap to share (`Sync`, no interior mutability).
#[derive(Debug, Clone, Default)]
pub struct Acl {
    anonymous: Lists<Box<str>>,
    users: HashMap<Box<str>, Lists<Box<str>>>,
    patterns: Lists<Pattern>,
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
                        acl.patterns.add(access, Pattern::compile(topic));
                        acl.has_patterns = true;
                    } else {
                        let lists = match &user {
                            None => &mut acl.anonymous,
                            Some(name) => acl.users.entry(name.clone()).or_default(),
                        };
                        lists.add(access, topic.into());
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
            .flat_map(|l| l.deny.iter().map(|r| std::borrow::Cow::Borrowed(&**r)))
            .chain(
                patterns
                    .into_iter()
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
            .flat_map(|l| l.read.iter())
            .any(|rule| covers(rule, filter))
            || patterns
                .into_iter()
                .flat_map(|l| l.read.iter())
                .filter(|p| applies(p, &who))
                .any(|p| covers(&p.substitute(&who), filter));
        match (granted, overlaps_deny) {
            (false, _) => SubscribeCheck::Denied,
            (true, true) => SubscribeCheck::AllowedCheckEachMessage,
            (true, false) => SubscribeCheck::Allowed,
        }
    }

    fn check(&self, who: Who<'_>, topic: &str, want: Want) -> bool {
        if self.dangerous(&who) {
            return false;
        }
        let topic_rules = self.topic_rules(who.username);
        let patterns = self.patterns();
        let denied = topic_rules
            .is_some_and(|l| l.deny.iter().any(|rule| filter_matches(rule, topic)))
            || patterns.is_some_and(|l| {
                l.deny
                    .iter()
                    .any(|p| applies(p, &who) && pieces_match(p.bytes(&who), topic))
            });
        if denied {
            return false;
        }
        topic_rules.is_some_and(|l| {
            l.grants(want)
                .iter()
                .any(|rule| filter_matches(rule, topic))
        }) || patterns.is_some_and(|l| {
            l.grants(want)
                .iter()
                .any(|p| applies(p, &who) && pieces_match(p.bytes(&who), topic))
        })
    }

    /// Mosquitto refuses pattern ACLs for a username or client id containing `+` or `#`
    /// (substituting them would widen the pattern); such a client is denied everything.
    fn dangerous(&self, who: &Who<'_>) -> bool {
        let bad = |s: &str| s.bytes().any(|b| b == b'+' || b == b'#');
        self.has_patterns && (who.username.is_some_and(bad) || bad(who.client_id))
    }

    fn topic_rules(&self, username: Option<&str>) -> Option<&Lists<Box<str>>> {
        match username {
            None => Some(&self.anonymous),
            Some(name) => self.users.get(name),
        }
    }

    fn patterns(&self) -> Option<&Lists<Pattern>> {
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

/// [`filter_matches`] for a filter given as bytes (a substituted pattern). The filter's `+` and
/// `#` must occupy whole levels, which holds because the template was validated and substituted
/// values never contain `+` or `#` (see [`Acl::dangerous`]).
fn pieces_match(filter: impl Iterator<Item = u8>, topic: &str) -> bool {
    let mut f = filter.peekable();
    let t = topic.as_bytes();
    if t.first() == Some(&b'$') && matches!(f.peek(), Some(b'+' | b'#')) {
        return false;
    }
    // Start of the current topic level; `None` once the topic has no more levels.
    let mut level = Some(0usize);
    loop {
        match f.peek() {
            Some(b'#') => return true,
            Some(b'+') => {
                f.next();
                let Some(start) = level else { return false };
                level = t[start..]
                    .iter()
                    .position(|&b| b == b'/')
                    .map(|at| start + at + 1);
            }
            _ => {
                let Some(mut j) = level else { return false };
                while let Some(&c) = f.peek() {
                    if c == b'/' {
                        break;
                    }
                    if t.get(j) != Some(&c) {
                        return false;
                    }
                    j += 1;
                    f.next();
                }
                level = match t.get(j) {
                    None => None,
                    Some(b'/') => Some(j + 1),
                    Some(_) => return false,
                };
            }
        }
        match f.next() {
            Some(b'/') => {}
            None => return level.is_none(),
            Some(_) => return false,
        }
    }
}

/// Does every topic name that `filter` matches also match `rule`? Both are valid filters.
/// Exact except that `+/#` is not recognised as covering `#`, which only errs toward denying.
fn covers(rule: &str, filter: &str) -> bool {
    if filter.starts_with('$') && rule.starts_with(['+', '#']) {
        return false;
    }
    let mut r = rule.split('/');
    let mut f = filter.split('/');
    loop {
        match (r.next(), f.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(fl)) if fl != "#" => {}
            (Some(rl), Some(fl)) if rl == fl && fl != "#" && fl != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Is there a topic name that both filters match?
fn intersects(a: &str, b: &str) -> bool {
    let wild_first = |s: &str| s.starts_with(['+', '#']);
    // A `$` topic is matched only by filters whose first level is literal and starts with `$`.
    if (a.starts_with('$') && wild_first(b)) || (b.starts_with('$') && wild_first(a)) {
        return false;
    }
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) | (Some(_), Some("+")) => {}
            (Some(l), Some(m)) if l == m => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SubscribeCheck::*;

    fn acl(text: &str) -> Acl {
        Acl::parse(text).expect("valid acl")
    }

    #[test]
    fn empty_file_denies_everything() {
        let a = acl("");
        assert!(!a.may_publish(None, "c", "a"));
        assert!(!a.may_receive(Some("u"), "c", "a"));
        assert_eq!(a.may_subscribe(None, "c", "a"), Denied);
    }

    #[test]
    fn comments_and_blank_lines() {
        let a = acl("# comment\n\n   \n  # indented comment\r\ntopic a/b\r\n\t\n");
        assert!(a.may_publish(None, "c", "a/b"));
        assert!(a.may_receive(None, "c", "a/b"));
        assert!(!a.may_publish(None, "c", "a/c"));
    }

    #[test]
    fn anonymous_rules_before_any_user_line() {
        let a = acl("topic read public/#\nuser alice\ntopic alice/#\n");
        assert!(a.may_receive(None, "c", "public/x"));
        assert!(!a.may_publish(None, "c", "public/x"));
        assert!(!a.may_receive(None, "c", "alice/x"));
        // A user does not get the anonymous rules.
        assert!(!a.may_receive(Some("alice"), "c", "public/x"));
        assert!(a.may_publish(Some("alice"), "c", "alice/x"));
        // Unknown user: no topic rules at all.
        assert!(!a.may_receive(Some("bob"), "c", "alice/x"));
        assert!(!a.may_receive(Some("bob"), "c", "public/x"));
    }

    #[test]
    fn user_rules_usernames_with_spaces_and_repeated_blocks() {
        let a = acl("user Jane Doe\ntopic write jd/in\nuser bob\ntopic bob\nuser Jane Doe\ntopic read jd/out\n");
        assert!(a.may_publish(Some("Jane Doe"), "c", "jd/in"));
        assert!(!a.may_receive(Some("Jane Doe"), "c", "jd/in"));
        assert!(a.may_receive(Some("Jane Doe"), "c", "jd/out"));
        assert!(!a.may_publish(Some("Jane Doe"), "c", "jd/out"));
        assert!(!a.may_publish(Some("Jane"), "c", "jd/in"));
        assert!(a.may_publish(Some("bob"), "c", "bob"));
    }

    #[test]
    fn readwrite_default_and_access_words() {
        let a = acl("topic rw1\ntopic readwrite rw2\ntopic read r\ntopic write w\n");
        for t in ["rw1", "rw2"] {
            assert!(a.may_publish(None, "c", t));
            assert!(a.may_receive(None, "c", t));
        }
        assert!(a.may_receive(None, "c", "r"));
        assert!(!a.may_publish(None, "c", "r"));
        assert!(a.may_publish(None, "c", "w"));
        assert!(!a.may_receive(None, "c", "w"));
        // Mosquitto quirk: a single word is the topic, even an access word.
        let a = acl("topic read\n");
        assert!(a.may_publish(None, "c", "read"));
        // With an access word, the topic is the rest of the line and may contain spaces.
        let a = acl("topic read  a topic/with spaces  \n");
        assert!(a.may_receive(None, "c", "a topic/with spaces"));
    }

    #[test]
    fn deny_wins_regardless_of_order() {
        let a = acl("topic deny a/secret\ntopic a/#\ntopic deny a/+/hidden\n");
        assert!(a.may_publish(None, "c", "a/x"));
        assert!(!a.may_publish(None, "c", "a/secret"));
        assert!(!a.may_receive(None, "c", "a/secret"));
        assert!(!a.may_receive(None, "c", "a/x/hidden"));
        assert!(a.may_receive(None, "c", "a/x/shown"));
        // A pattern deny wins over a user grant, and a user deny over a pattern grant.
        let a = acl("user u\ntopic #\ntopic deny p/own\npattern deny secret/%c\npattern p/#\n");
        assert!(a.may_publish(Some("u"), "c1", "secret/c2"));
        assert!(!a.may_publish(Some("u"), "c1", "secret/c1"));
        assert!(!a.may_publish(Some("u"), "c1", "p/own"));
        assert!(a.may_publish(Some("v"), "c1", "p/own"));
    }

    #[test]
    fn patterns_substitute_username_and_client_id() {
        let a = acl("user alice\ntopic read x\npattern write sensor/%u/data\npattern clients/%c/#\npattern read mix/%u-%c\n");
        // Patterns apply to every client, even those after/without a `user` block.
        assert!(a.may_publish(Some("alice"), "c1", "sensor/alice/data"));
        assert!(a.may_publish(Some("bob"), "c1", "sensor/bob/data"));
        assert!(!a.may_publish(Some("bob"), "c1", "sensor/alice/data"));
        assert!(!a.may_receive(Some("bob"), "c1", "sensor/bob/data"));
        assert!(a.may_receive(Some("bob"), "c1", "clients/c1/x/y"));
        assert!(a.may_receive(Some("bob"), "c1", "clients/c1"));
        assert!(!a.may_receive(Some("bob"), "c1", "clients/c2/x"));
        assert!(a.may_receive(Some("bob"), "c1", "mix/bob-c1"));
        // %u patterns do not apply without a username; %c ones do.
        assert!(!a.may_publish(None, "c1", "sensor//data"));
        assert!(!a.may_publish(None, "c1", "sensor/%u/data"));
        assert!(a.may_publish(None, "c1", "clients/c1/z"));
        // A `/` in the username spans levels, as in Mosquitto.
        assert!(a.may_publish(Some("a/b"), "c1", "sensor/a/b/data"));
    }

    #[test]
    fn wildcards_in_identity_are_refused_when_patterns_exist() {
        let a = acl("topic #\nuser u+\ntopic #\npattern clients/%c/#\n");
        assert!(!a.may_publish(None, "c#", "clients/x/y"));
        assert!(!a.may_publish(None, "c#", "other"));
        assert!(!a.may_receive(Some("u+"), "c", "other"));
        assert_eq!(a.may_subscribe(None, "+", "clients/+/y"), Denied);
        assert!(a.may_publish(None, "c", "other"));
        // Without patterns nothing is substituted, so the identity does not matter.
        let a = acl("user u+\ntopic #\n");
        assert!(a.may_publish(Some("u+"), "c#", "x"));
    }

    #[test]
    fn sys_topics_need_an_explicit_grant() {
        let a = acl("topic #\nuser admin\ntopic #\ntopic read $SYS/#\npattern +/%c\n");
        assert!(a.may_receive(None, "c", "a/b"));
        assert!(!a.may_receive(None, "c", "$SYS/broker/uptime"));
        assert!(!a.may_receive(None, "c", "$SYS/c"));
        assert_eq!(a.may_subscribe(None, "c", "$SYS/#"), Denied);
        assert_eq!(a.may_subscribe(None, "c", "#"), Allowed);
        assert!(a.may_receive(Some("admin"), "c", "$SYS/broker/uptime"));
        assert!(!a.may_publish(Some("admin"), "c", "$SYS/broker/uptime"));
        assert_eq!(a.may_subscribe(Some("admin"), "c", "$SYS/#"), Allowed);
        assert_eq!(
            a.may_subscribe(Some("admin"), "c", "$SYS/broker/+"),
            Allowed
        );
    }

    #[test]
    fn shared_prefix_is_stripped_on_subscribe() {
        let a = acl("topic read jobs/#\n");
        assert_eq!(a.may_subscribe(None, "c", "$share/g/jobs/+"), Allowed);
        assert_eq!(a.may_subscribe(None, "c", "$share/g/other"), Denied);
        assert_eq!(a.may_subscribe(None, "c", "$share/g"), Denied);
        assert_eq!(a.may_subscribe(None, "c", "$share//jobs/x"), Denied);
    }

    #[test]
    fn subscribe_classification() {
        let a = acl(concat!(
            "topic read foo/#\n",
            "topic deny foo/secret\n",
            "topic read bar/+\n",
            "topic write w/#\n",
            "topic read d/#\n",
            "topic deny d/#\n",
            "topic read x/a\n",
            "topic read x/b\n",
            "topic read deep/+/+/end\n",
            "topic deny deep/+/no/+\n",
        ));
        let cases = [
            ("foo/#", AllowedCheckEachMessage),
            ("foo/+", AllowedCheckEachMessage),
            ("#", Denied),
            ("+/secret", Denied),
            ("foo", Allowed),
            ("foo/x", Allowed),
            ("foo/+/bar", Allowed),
            ("foo/x/#", Allowed),
            ("foo/secret", Denied),
            ("foo/secret/x", Allowed),
            ("bar/x", Allowed),
            ("bar/+", Allowed),
            ("bar/#", Denied),
            ("bar", Denied),
            ("bar/x/y", Denied),
            ("w/x", Denied),
            ("d/x", Denied),
            ("d/#", Denied),
            ("x/a", Allowed),
            ("x/+", Denied),
            ("deep/+/+/end", AllowedCheckEachMessage),
            ("deep/a/+/end", AllowedCheckEachMessage),
            ("deep/a/yes/end", Allowed),
            ("deep/a/no/end", Denied),
        ];
        for (filter, want) in cases {
            assert_eq!(a.may_subscribe(None, "c", filter), want, "filter {filter}");
        }
        // Delivery filtering complements AllowedCheckEachMessage.
        assert!(!a.may_receive(None, "c", "foo/secret"));
        assert!(a.may_receive(None, "c", "foo/public"));
    }

    #[test]
    fn subscribe_with_patterns() {
        let a = acl("pattern read users/%u/#\npattern deny users/%u/private\npattern read c/%c\n");
        assert_eq!(
            a.may_subscribe(Some("al"), "c1", "users/al/#"),
            AllowedCheckEachMessage
        );
        assert_eq!(a.may_subscribe(Some("al"), "c1", "users/al/inbox"), Allowed);
        assert_eq!(
            a.may_subscribe(Some("al"), "c1", "users/al/private"),
            Denied
        );
        assert_eq!(a.may_subscribe(Some("al"), "c1", "users/bo/inbox"), Denied);
        assert_eq!(a.may_subscribe(Some("al"), "c1", "users/+/inbox"), Denied);
        assert_eq!(a.may_subscribe(None, "c1", "users/al/inbox"), Denied);
        assert_eq!(a.may_subscribe(None, "c1", "c/c1"), Allowed);
        assert_eq!(a.may_subscribe(None, "c1", "c/+"), Denied);
    }

    #[test]
    fn invalid_subscribe_filter_is_denied() {
        let a = acl("topic #\n");
        assert_eq!(a.may_subscribe(None, "c", "a/#/b"), Denied);
        assert_eq!(a.may_subscribe(None, "c", "a+"), Denied);
        assert_eq!(a.may_subscribe(None, "c", ""), Denied);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let err = |text: &str| Acl::parse(text).expect_err("should fail");
        assert!(matches!(
            err("# c\n\ntopic a\nbogus x\n"),
            AclError::UnknownKeyword { line: 4, ref keyword } if keyword == "bogus"
        ));
        assert!(matches!(
            err("topic a\ntopic readonly a/b\n"),
            AclError::BadAccess { line: 2, ref access } if access == "readonly"
        ));
        assert!(matches!(err("topic\n"), AclError::MissingTopic { line: 1 }));
        assert!(matches!(
            err("\npattern   \n"),
            AclError::MissingTopic { line: 2 }
        ));
        assert!(matches!(
            err("user\n"),
            AclError::MissingUsername { line: 1 }
        ));
        assert!(matches!(
            err("topic read a/#/b\n"),
            AclError::InvalidTopic {
                line: 1,
                source: TopicError::MisplacedMultiLevelWildcard,
                ..
            }
        ));
        assert!(matches!(
            err("Topic a\n"),
            AclError::UnknownKeyword { line: 1, .. }
        ));
        let message = err("x\n").to_string();
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn load_reads_a_file() {
        let path = std::env::temp_dir().join(format!("shardmq-acl-test-{}", std::process::id()));
        std::fs::write(&path, "topic read a\n").unwrap();
        let a = Acl::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(a.may_receive(None, "c", "a"));
        assert!(matches!(Acl::load(&path), Err(AclError::Io { .. })));
    }

    /// Small exhaustive universes of filters and topics.
    fn filters() -> Vec<String> {
        let levels = ["a", "b", "", "+", "#", "$s"];
        let mut out = Vec::new();
        let mut frontier: Vec<String> = levels.iter().map(|s| s.to_string()).collect();
        for _ in 0..3 {
            let mut next = Vec::new();
            for f in &frontier {
                if validate_topic_filter(f).is_ok() {
                    out.push(f.clone());
                }
                if !f.ends_with('#') {
                    for l in levels {
                        if l != "$s" {
                            next.push(format!("{f}/{l}"));
                        }
                    }
                }
            }
            frontier = next;
        }
        out
    }

    fn topics() -> Vec<String> {
        filters()
            .into_iter()
            .filter(|f| !f.contains(['+', '#']))
            .chain(["a/b/a/b".into(), "$s/a/b/a".into()])
            .collect()
    }

    #[test]
    fn pieces_match_agrees_with_filter_matches() {
        let topics = topics();
        for f in filters() {
            let pattern = Pattern::compile(&f);
            let who = Who {
                username: None,
                client_id: "",
            };
            for t in &topics {
                assert_eq!(
                    pieces_match(pattern.bytes(&who), t),
                    filter_matches(&f, t),
                    "filter {f:?} topic {t:?}"
                );
            }
        }
        // Substitution inside a level and across pieces.
        let p = Pattern::compile("a/x%cy/%u");
        let who = Who {
            username: Some("u/v"),
            client_id: "1",
        };
        assert!(pieces_match(p.bytes(&who), "a/x1y/u/v"));
        assert!(!pieces_match(p.bytes(&who), "a/x1y/u"));
        assert_eq!(p.substitute(&who), "a/x1y/u/v");
    }

    #[test]
    fn covers_and_intersects_agree_with_brute_force() {
        let filters = filters();
        let topics = topics();
        for r in &filters {
            for f in &filters {
                let matched = |x: &str| -> Vec<&String> {
                    topics.iter().filter(|t| filter_matches(x, t)).collect()
                };
                let (mr, mf) = (matched(r), matched(f));
                let subset = mf.iter().all(|t| mr.contains(t));
                let overlap = mf.iter().any(|t| mr.contains(t));
                // covers may only err toward "no"; only `+/#` vs `#` is known to do so.
                if covers(r, f) {
                    assert!(subset, "covers({r:?}, {f:?}) but not a subset");
                } else if subset && !(r.starts_with("+/") && f.starts_with('#')) {
                    // The finite universe can make a non-covering pair look like a subset
                    // when the filter ends in `#`; only check pairs without `#` in f.
                    assert!(f.contains('#'), "missed covers({r:?}, {f:?})");
                }
                // intersects may only err toward "yes" (more per-message checks).
                if overlap {
                    assert!(intersects(r, f), "missed intersects({r:?}, {f:?})");
                }
                assert_eq!(intersects(r, f), intersects(f, r));
            }
        }
    }
}
