//! Topic names, topic filters and shared-subscription filters, as MQTT 3.1.1 §4.7 and
//! MQTT 5.0 §4.7–4.8 define them.
//!
//! These functions check *structure* only (wildcard placement, emptiness, shared-subscription
//! syntax). UTF-8 well-formedness and the U+0000 ban are the codec's job, because they apply to
//! every string in a packet, not only to topics.

use std::fmt;

/// The single-level wildcard.
pub const SINGLE_LEVEL_WILDCARD: char = '+';
/// The multi-level wildcard.
pub const MULTI_LEVEL_WILDCARD: char = '#';
/// Prefix of a shared subscription filter (MQTT 5.0 §4.8.2).
pub const SHARED_PREFIX: &str = "$share/";

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// A topic name or filter must be at least one byte long.
    Empty,
    /// A topic name (as opposed to a filter) may not contain `+` or `#`.
    WildcardInName,
    /// `+` must occupy a whole level.
    MisplacedSingleLevelWildcard,
    /// `#` must occupy a whole level and be the last one.
    MisplacedMultiLevelWildcard,
    /// `$share/{name}/{filter}` with an empty or invalid share name or filter.
    InvalidSharedSubscription,
    /// Longer than the configured maximum.
    TooLong,
    /// More levels than the configured maximum.
    TooManyLevels,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            TopicError::Empty => "topic is empty",
            TopicError::WildcardInName => "wildcard in a topic name",
            TopicError::MisplacedSingleLevelWildcard => "'+' does not occupy a whole level",
            TopicError::MisplacedMultiLevelWildcard => "'#' is not alone in the last level",
            TopicError::InvalidSharedSubscription => "malformed $share/{group}/{filter}",
            TopicError::TooLong => "topic longer than the configured maximum",
            TopicError::TooManyLevels => "topic has more levels than the configured maximum",
        };
        f.write_str(text)
    }
}

impl std::error::Error for TopicError {}

/// Checks a topic name as used in PUBLISH and in a will.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic
        .bytes()
        .any(|b| b == SINGLE_LEVEL_WILDCARD as u8 || b == MULTI_LEVEL_WILDCARD as u8)
    {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE and UNSUBSCRIBE, including the
/// `$share/{group}/{filter}` form.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    if let Some(shared) = parse_shared(filter) {
        let shared = shared?;
        return validate_plain_filter(shared.filter)
            .map_err(|_| TopicError::InvalidSharedSubscription);
    }
    validate_plain_filter(filter)
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    if filter.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        if level.contains(MULTI_LEVEL_WILDCARD) && (level.len() != 1 || !is_last) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains(SINGLE_LEVEL_WILDCARD) && level.len() != 1 {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Checks configurable limits on a name or filter: total bytes and number of levels.
/// `0` means "no limit" for either.
pub fn check_limits(topic: &str, max_len: usize, max_levels: usize) -> Result<(), TopicError> {
    if max_len != 0 && topic.len() > max_len {
        return Err(TopicError::TooLong);
    }
    if max_levels != 0 && level_count(topic) > max_levels {
        return Err(TopicError::TooManyLevels);
    }
    Ok(())
}

/// Number of levels in a topic or filter (`a/b` has 2, `/` has 2, `a` has 1).
pub fn level_count(topic: &str) -> usize {
    topic.bytes().filter(|&b| b == b'/').count() + 1
}

/// True if the name or filter starts with `$` (system topics such as `$SYS/...`): wildcards in
/// the first level of a filter never match those (MQTT 3.1.1 §4.7.2).
pub fn is_dollar_topic(topic: &str) -> bool {
    topic.as_bytes().first() == Some(&b'$')
}

/// True if the filter contains `+` or `#`.
pub fn has_wildcards(filter: &str) -> bool {
    filter
        .bytes()
        .any(|b| b == SINGLE_LEVEL_WILDCARD as u8 || b == MULTI_LEVEL_WILDCARD as u8)
}

/// The parts of `$share/{group}/{filter}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name (group).
    pub group: &'a str,
    /// The filter the group subscribes to.
    pub filter: &'a str,
}

/// `None` if `filter` is not a shared subscription; `Some(Err)` if it starts with `$share/` but is
/// malformed; `Some(Ok)` with the group and the inner filter otherwise.
pub fn parse_shared(filter: &str) -> Option<Result<SharedFilter<'_>, TopicError>> {
    let rest = filter.strip_prefix(SHARED_PREFIX)?;
    let Some((group, inner)) = rest.split_once('/') else {
        return Some(Err(TopicError::InvalidSharedSubscription));
    };
    if group.is_empty()
        || group.contains(SINGLE_LEVEL_WILDCARD)
        || group.contains(MULTI_LEVEL_WILDCARD)
        || inner.is_empty()
    {
        return Some(Err(TopicError::InvalidSharedSubscription));
    }
    Some(Ok(SharedFilter {
        group,
        filter: inner,
    }))
}

/// Reference matcher: does `filter` match `topic`? Straightforward level by level comparison,
/// used by tests as the oracle for the trie and by callers that match a single pair.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if is_dollar_topic(topic) && matches!(filter.as_bytes().first(), Some(b'+') | Some(b'#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_topic_name("a/b/c"), Ok(()));
        assert_eq!(validate_topic_name("/"), Ok(()));
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a#"), Err(TopicError::WildcardInName));
    }

    #[test]
    fn filters() {
        for ok in [
            "#",
            "+",
            "+/+",
            "a/+/c",
            "a/#",
            "/#",
            "+/",
            "$SYS/#",
            "sport/tennis/+",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            validate_topic_filter("a/#/b"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::MisplacedMultiLevelWildcard)
        );
        assert_eq!(
            validate_topic_filter("a+/b"),
            Err(TopicError::MisplacedSingleLevelWildcard)
        );
        assert_eq!(validate_topic_filter(""), Err(TopicError::Empty));
    }

    #[test]
    fn shared_filters() {
        assert_eq!(
            parse_shared("$share/g/a/+"),
            Some(Ok(SharedFilter {
                group: "g",
                filter: "a/+"
            }))
        );
        assert_eq!(parse_shared("a/b"), None);
        assert_eq!(validate_topic_filter("$share/g/#"), Ok(()));
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
            "$share/g/a#",
        ] {
            assert_eq!(
                validate_topic_filter(bad),
                Err(TopicError::InvalidSharedSubscription),
                "{bad}"
            );
        }
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
    }

    #[test]
    fn limits() {
        assert_eq!(check_limits("a/b/c", 0, 0), Ok(()));
        assert_eq!(check_limits("a/b/c", 4, 0), Err(TopicError::TooLong));
        assert_eq!(check_limits("a/b/c", 0, 2), Err(TopicError::TooManyLevels));
        assert_eq!(level_count("/"), 2);
    }
}
