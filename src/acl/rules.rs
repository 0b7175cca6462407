//! Compiled rules: access lists, `pattern` templates, and the first-level index every rule set
//! is kept in.
//!
//! ## Why an index (and no verdict cache)
//! Every PUBLISH asks [`Acl::may_publish`](super::Acl::may_publish). Scanning all the rules that
//! apply to a client made that cost grow with the file: with the 1,000-rule ACL of
//! `scripts/bench-acl.sh` each publish matched 25 `pattern deny` lines (substituting `%u`/`%c`)
//! before reaching the user's grant, ~30% more broker CPU per message than without an ACL.
//!
//! A topic name can only be matched by a filter whose first level is `+`, `#` or equal to the
//! topic's first level. So each rule set (the anonymous rules, each user's rules, the patterns)
//! keeps its rules in buckets keyed by a literal first level, plus one wildcard bucket for rules
//! whose first level is `+` or `#` or (patterns) contains `%u`/`%c` (a substitution can be
//! anything, even span levels). A pattern whose `%u`/`%c` is in a later level is still keyed
//! by its literal first level. A check looks up one bucket per rule set and scans it and the
//! wildcard bucket: the same rules minus some that cannot match, and since a verdict does not
//! depend on rule order (any matching deny wins, else any matching grant), exactly the same
//! answers. `acl_bench` in `benches/acl.rs` measures it; `tests.rs` checks it against a
//! straightforward evaluation of the rules on random rule sets and topics.
//!
//! A per-connection cache of the last verdict per topic was considered and not done: after the
//! index the check costs about what hashing the cache key would (a bucket lookup, then the few
//! rules of one first level), and a cache needs per-connection state in the shard plus
//! invalidation on ACL reload (which replaces the `AclAuthorization` hook with a new `Acl`).
//!
//! Substitution never builds a string on the publish/delivery path: [`Pattern::bytes`] yields
//! the substituted filter's bytes for [`pieces_match`](super::matching::pieces_match).

use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    pub(super) fn parse(word: &str) -> Option<Access> {
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
pub(super) struct Lists<R> {
    pub(super) deny: Vec<R>,
    pub(super) read: Vec<R>,
    pub(super) write: Vec<R>,
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
    pub(super) fn add(&mut self, access: Access, rule: R) {
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

    pub(super) fn grants(&self, want: Want) -> &[R] {
        match want {
            Want::Read => &self.read,
            Want::Write => &self.write,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Want {
    Read,
    Write,
}

/// One piece of a compiled `pattern` topic.
#[derive(Debug, Clone)]
pub(super) enum Piece {
    Lit(Box<str>),
    Username,
    ClientId,
}

/// A compiled `pattern` rule.
#[derive(Debug, Clone)]
pub(super) struct Pattern {
    pub(super) pieces: Box<[Piece]>,
    pub(super) uses_username: bool,
}

impl Pattern {
    pub(super) fn compile(topic: &str) -> Pattern {
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
    pub(super) fn bytes<'a>(&'a self, who: &'a Who<'a>) -> impl Iterator<Item = u8> + 'a {
        self.pieces.iter().flat_map(move |piece| {
            let s: &str = match piece {
                Piece::Lit(s) => s,
                Piece::Username => who.username.unwrap_or(""),
                Piece::ClientId => who.client_id,
            };
            s.bytes()
        })
    }

    pub(super) fn substitute(&self, who: &Who<'_>) -> String {
        String::from_utf8(self.bytes(who).collect()).expect("pieces of UTF-8 strings")
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Who<'a> {
    pub(super) username: Option<&'a str>,
    pub(super) client_id: &'a str,
}

/// The first level of a topic name or filter (all of it when it has no `/`).
pub(super) fn first_level(topic: &str) -> &str {
    match topic.find('/') {
        Some(at) => &topic[..at],
        None => topic,
    }
}

/// One rule set (the anonymous rules, a user's rules, or the patterns) indexed by the first
/// level of each rule: see the module documentation.
#[derive(Debug, Clone)]
pub(super) struct RuleSet<R> {
    /// Rules whose first level is a literal, keyed by it.
    by_first_level: HashMap<Box<str>, Lists<R>>,
    /// Rules whose first level is `+`, `#` or contains a substitution.
    wildcard: Lists<R>,
}

impl<R> Default for RuleSet<R> {
    fn default() -> Self {
        RuleSet {
            by_first_level: HashMap::new(),
            wildcard: Lists::default(),
        }
    }
}

impl<R: Clone> RuleSet<R> {
    /// Adds a rule; `first_level` is its literal first level, `None` for the wildcard bucket.
    pub(super) fn add(&mut self, first_level: Option<&str>, access: Access, rule: R) {
        let lists = match first_level {
            Some(level) if level != "+" && level != "#" => {
                self.by_first_level.entry(level.into()).or_default()
            }
            _ => &mut self.wildcard,
        };
        lists.add(access, rule);
    }
}

impl<R> RuleSet<R> {
    /// The buckets whose rules could match the topic name `topic`: its first level's and the
    /// wildcard bucket. No other rule of the set can match it.
    pub(super) fn candidates(&self, topic: &str) -> [Option<&Lists<R>>; 2] {
        [
            self.by_first_level.get(first_level(topic)),
            Some(&self.wildcard),
        ]
    }

    /// Every bucket (for filters, whose first level may be a wildcard).
    pub(super) fn all(&self) -> impl Iterator<Item = &Lists<R>> {
        self.by_first_level
            .values()
            .chain(std::iter::once(&self.wildcard))
    }
}

impl Pattern {
    /// The literal first level of the template, or `None` when the first level contains a
    /// substitution (then the substituted filter's first level depends on the client).
    pub(super) fn literal_first_level(&self) -> Option<&str> {
        match &*self.pieces {
            [Piece::Lit(s), rest @ ..] => match s.find('/') {
                Some(at) => Some(&s[..at]),
                None if rest.is_empty() => Some(s),
                None => None,
            },
            _ => None,
        }
    }
}
