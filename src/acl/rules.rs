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
//! ## What a check costs after the index
//! Per publish: the user's rule set is found once per connection, not per check
//! ([`ClientAcl`](super::ClientAcl): the username is hashed and the identity searched for `+`/`#`
//! at CONNECT, and again after a reload); the first-level lookups use a non-keyed hash
//! ([`super::hash`]); topic rules are matched by one walk over the bytes
//! ([`rule_matches`](super::matching::rule_matches)) instead of two `split('/')` iterators.
//! Patterns are still matched against the topic with the client's identity in place
//! ([`Pattern::bytes`]) rather than substituted once per connection: copying the substituted
//! patterns into every connection would cost memory per connection in proportion to the file
//! (~10 KB each with the bench's 250 patterns), for a saving only on topics under a pattern's
//! first level.
//!
//! A per-connection cache of the last verdict per topic was considered and not done: after the
//! index the check costs about what comparing the cache key would (a bucket lookup, then the
//! few rules of one first level), and it needs mutable per-connection state on the check path.
//!
//! Substitution never builds a string on the publish/delivery path: [`Pattern::bytes`] yields
//! the substituted filter's bytes for [`pieces_match`](super::matching::pieces_match).

use super::hash::{level_hash, FxHashMap};

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
        let mut filter = String::new();
        for piece in self.pieces.iter() {
            filter.push_str(match piece {
                Piece::Lit(s) => s,
                Piece::Username => who.username.unwrap_or(""),
                Piece::ClientId => who.client_id,
            });
        }
        filter
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Who<'a> {
    pub(super) username: Option<&'a str>,
    pub(super) client_id: &'a str,
}

/// The first level of a topic name or filter (all of it when it has no `/`).
pub(super) fn first_level(topic: &str) -> &str {
    // A byte loop: topics' first levels are short, `str::find` sets up a searcher.
    match topic.bytes().position(|b| b == b'/') {
        Some(at) => &topic[..at],
        None => topic,
    }
}

/// A topic name's first level and its [`level_hash`]: what [`RuleSet::candidates`] looks up,
/// computed once per check for all the rule sets it consults.
#[derive(Debug, Clone, Copy)]
pub(super) struct LevelKey<'a> {
    level: &'a str,
    hash: u64,
}

impl<'a> LevelKey<'a> {
    pub(super) fn of_topic(topic: &'a str) -> LevelKey<'a> {
        let level = first_level(topic);
        LevelKey {
            level,
            hash: level_hash(level),
        }
    }
}

/// One rule set (the anonymous rules, a user's rules, or the patterns) indexed by the first
/// level of each rule: see the module documentation.
///
/// The literal first levels are kept sorted by their hash next to their buckets (a binary
/// search over a few integers, then one string comparison) rather than in a `HashMap`: the
/// topic's first level is hashed once per check and the same hash serves every rule set.
#[derive(Debug, Clone)]
pub(super) struct RuleSet<R> {
    /// `level_hash` of each literal first level, ascending; `buckets[i]` belongs to `hashes[i]`.
    hashes: Vec<u64>,
    /// The literal first level and its rules.
    buckets: Vec<(Box<str>, Lists<R>)>,
    /// Rules whose first level is `+`, `#` or contains a substitution.
    wildcard: Lists<R>,
    /// While the file is parsed: where each literal first level's bucket is (`buckets` are in
    /// the order first seen until [`RuleSet::finish`] sorts them; emptied then).
    building: FxHashMap<Box<str>, usize>,
}

impl<R> Default for RuleSet<R> {
    fn default() -> Self {
        RuleSet {
            hashes: Vec::new(),
            buckets: Vec::new(),
            wildcard: Lists::default(),
            building: FxHashMap::default(),
        }
    }
}

impl<R: Clone> RuleSet<R> {
    /// Adds a rule; `first_level` is its literal first level, `None` for the wildcard bucket.
    pub(super) fn add(&mut self, first_level: Option<&str>, access: Access, rule: R) {
        let lists = match first_level {
            Some(level) if level != "+" && level != "#" => {
                let at = match self.building.get(level) {
                    Some(&at) => at,
                    None => {
                        let at = self.buckets.len();
                        self.hashes.push(level_hash(level));
                        self.buckets.push((level.into(), Lists::default()));
                        self.building.insert(level.into(), at);
                        at
                    }
                };
                &mut self.buckets[at].1
            }
            _ => &mut self.wildcard,
        };
        lists.add(access, rule);
    }
}

impl<R> RuleSet<R> {
    /// Sorts the buckets by hash for [`RuleSet::candidates`]; call once every rule is added.
    pub(super) fn finish(&mut self) {
        let mut entries: Vec<_> = std::mem::take(&mut self.hashes)
            .into_iter()
            .zip(std::mem::take(&mut self.buckets))
            .collect();
        entries.sort_by_key(|(hash, _)| *hash);
        (self.hashes, self.buckets) = entries.into_iter().unzip();
        self.building = FxHashMap::default();
    }
}

impl<R> RuleSet<R> {
    /// Where the bucket of `key` is (`Ok`), or where it would go (`Err`).
    fn find(&self, key: LevelKey<'_>) -> Result<usize, usize> {
        let mut at = self.hashes.partition_point(|&h| h < key.hash);
        while self.hashes.get(at) == Some(&key.hash) {
            if self
                .buckets
                .get(at)
                .is_some_and(|(level, _)| **level == *key.level)
            {
                return Ok(at);
            }
            at += 1;
        }
        Err(at)
    }

    /// The buckets whose rules could match a topic name whose first level is `key`: that
    /// level's and the wildcard bucket. No other rule of the set can match it.
    pub(super) fn candidates(&self, key: LevelKey<'_>) -> [Option<&Lists<R>>; 2] {
        let literal = match self.find(key) {
            Ok(at) => self.buckets.get(at).map(|(_, lists)| lists),
            Err(_) => None,
        };
        [literal, Some(&self.wildcard)]
    }

    /// Every bucket (for filters, whose first level may be a wildcard).
    pub(super) fn all(&self) -> impl Iterator<Item = &Lists<R>> {
        self.buckets
            .iter()
            .map(|(_, lists)| lists)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Two first levels with the same hash: the lookup compares the levels themselves.
    #[test]
    fn colliding_hashes_compare_the_level() {
        let mut set: RuleSet<Box<str>> = RuleSet::default();
        for level in ["a", "b", "c"] {
            set.add(Some(level), Access::Read, format!("{level}/#").into());
        }
        set.finish();
        set.hashes = vec![7, 7, 7];
        let find = |level: &str| {
            set.candidates(LevelKey { level, hash: 7 })[0].map(|lists| lists.read[0].to_string())
        };
        for level in ["a", "b", "c"] {
            assert_eq!(find(level), Some(format!("{level}/#")));
        }
        assert_eq!(find("d"), None);
        let real = LevelKey::of_topic("z/x");
        assert!(set.candidates(real)[0].is_none());
        assert!(set.candidates(real)[1].is_some_and(|w| w.read.is_empty()));
    }
}
