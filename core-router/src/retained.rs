//! Retained messages: topic name -> last retained message, matched against a subscription
//! filter.
//!
//! This is the reverse of [`crate::trie::SubscriptionTrie`]: the stored keys are plain topic
//! names and the query carries the wildcards. The store is a level trie, so a literal level in
//! the filter follows one child, `+` fans out over one level, and `a/#` visits only the `a`
//! subtree.
//!
//! Topics are stored as given: callers validate them ([`crate::topic::validate_topic_name`]).
//! Set, remove and drop are iterative; matching recurses once per `+` level of the filter,
//! which the broker bounds with its level limit ([`crate::topic::check_limits`]).

use std::fmt;

use crate::trie::{classify, split_level, Children, Edge};

struct Node<M> {
    children: Children<Node<M>>,
    msg: Option<M>,
}

impl<M> Default for Node<M> {
    fn default() -> Self {
        Node {
            children: Children::default(),
            msg: None,
        }
    }
}

impl<M> Drop for Node<M> {
    fn drop(&mut self) {
        // See the trie's node: flatten so a long chain cannot overflow the stack.
        if self.children.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        self.children.drain_into(&mut pending);
        while let Some(mut node) = pending.pop() {
            node.children.drain_into(&mut pending);
        }
    }
}

/// Retained messages by topic name.
pub struct RetainedStore<M> {
    root: Node<M>,
    len: usize,
}

impl<M> Default for RetainedStore<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> fmt::Debug for RetainedStore<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl<M> RetainedStore<M> {
    /// An empty store; allocates nothing until the first message.
    pub fn new() -> Self {
        RetainedStore {
            root: Node::default(),
            len: 0,
        }
    }

    /// Stores `msg` as the retained message of `topic`, returning the one it replaces.
    pub fn set(&mut self, topic: &str, msg: M) -> Option<M> {
        let mut node = &mut self.root;
        for level in topic.split('/') {
            node = node.children.get_or_insert_with(level, Node::default);
        }
        let previous = node.msg.replace(msg);
        self.len += usize::from(previous.is_none());
        previous
    }

    /// Removes the retained message of `topic` and prunes the nodes that held only it.
    pub fn remove(&mut self, topic: &str) -> Option<M> {
        // First walk: find the deepest node on the path that must stay (the root, or one holding
        // a message or another branch), and take the message.
        let mut keep_depth = 0;
        let mut node = &mut self.root;
        for (depth, level) in topic.split('/').enumerate() {
            if depth > 0 && (node.msg.is_some() || node.children.len() > 1) {
                keep_depth = depth;
            }
            node = node.children.get_mut(level)?;
        }
        let msg = node.msg.take()?;
        self.len -= 1;
        if node.children.is_empty() {
            // Second walk: cut the empty chain below the keeper.
            let mut node = &mut self.root;
            for (d, level) in topic.split('/').enumerate() {
                if d == keep_depth {
                    drop(node.children.remove(level));
                    break;
                }
                match node.children.get_mut(level) {
                    Some(child) => node = child,
                    None => break,
                }
            }
        }
        Some(msg)
    }

    /// The retained message of exactly `topic`.
    pub fn get(&self, topic: &str) -> Option<&M> {
        let mut node = &self.root;
        for level in topic.split('/') {
            node = node.children.get(level)?;
        }
        node.msg.as_ref()
    }

    /// Calls `f` for every retained message whose topic matches `filter` (wildcards allowed; a
    /// filter starting with `+` or `#` skips topics starting with `$`). Allocates only for a
    /// `#` whose subtree has children: one traversal stack for the whole call.
    pub fn for_each_match<F: FnMut(&M)>(&self, filter: &str, mut f: F) {
        match_from(&self.root, Some(filter), true, &mut f);
    }

    /// Number of retained messages.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if there are no retained messages.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every retained message.
    pub fn clear(&mut self) {
        self.root = Node::default();
        self.len = 0;
    }

    /// Number of trie nodes including the root (diagnostics: 1 for an empty store).
    pub fn node_count(&self) -> usize {
        let mut count = 0;
        let mut pending = vec![&self.root];
        while let Some(node) = pending.pop() {
            count += 1;
            node.children.for_each(|_, child| pending.push(child));
        }
        count
    }
}

/// Matches the remaining filter levels `rest` (`None`: none left) below `node`.
fn match_from<M>(
    mut node: &Node<M>,
    mut rest: Option<&str>,
    mut at_root: bool,
    f: &mut impl FnMut(&M),
) {
    loop {
        let Some(levels) = rest else {
            if let Some(msg) = &node.msg {
                f(msg);
            }
            return;
        };
        let (level, next) = split_level(levels);
        match classify(level, next.is_none()) {
            Edge::Literal(level) => match node.children.get(level) {
                Some(child) => {
                    node = child;
                    rest = next;
                    at_root = false;
                }
                None => return,
            },
            Edge::Plus => {
                node.children.for_each(|label, child| {
                    if !(at_root && label.starts_with('$')) {
                        match_from(child, next, false, f);
                    }
                });
                return;
            }
            Edge::Hash => {
                visit_subtree(node, at_root, f);
                return;
            }
        }
    }
}

/// Every message at or below `node`; at the root, `$` topics are left out.
fn visit_subtree<M>(node: &Node<M>, at_root: bool, f: &mut impl FnMut(&M)) {
    if let Some(msg) = &node.msg {
        f(msg);
    }
    let mut pending: Vec<&Node<M>> = Vec::new();
    node.children.for_each(|label, child| {
        if !(at_root && label.starts_with('$')) {
            pending.push(child);
        }
    });
    while let Some(node) = pending.pop() {
        if let Some(msg) = &node.msg {
            f(msg);
        }
        node.children.for_each(|_, child| pending.push(child));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic::filter_matches;

    fn matched(store: &RetainedStore<&'static str>, filter: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        store.for_each_match(filter, |m| out.push(*m));
        out.sort_unstable();
        out
    }

    const TOPICS: [&str; 12] = [
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "sport/",
        "/finance",
        "/",
        "finance",
        "$SYS",
        "$SYS/monitor/Clients",
        "a/$b",
        "a//b",
    ];

    fn store() -> RetainedStore<&'static str> {
        let mut store = RetainedStore::new();
        for t in TOPICS {
            assert_eq!(store.set(t, t), None);
        }
        store
    }

    fn naive(filter: &str) -> Vec<&'static str> {
        let mut out: Vec<_> = TOPICS
            .iter()
            .copied()
            .filter(|t| filter_matches(filter, t))
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn spec_examples_agree_with_the_oracle() {
        let store = store();
        for filter in [
            "sport/tennis/player1/#",
            "sport/#",
            "sport/tennis/+",
            "sport/+",
            "+/+",
            "/+",
            "+",
            "#",
            "+/#",
            "$SYS/#",
            "$SYS/monitor/+",
            "+/monitor/Clients",
            "a/+",
            "a/#",
            "a/+/b",
            "/#",
            "nothing/#",
            "sport",
        ] {
            assert_eq!(matched(&store, filter), naive(filter), "{filter}");
        }
        assert_eq!(matched(&store, "sport/#").len(), 5);
        assert!(!matched(&store, "#").contains(&"$SYS"));
        assert_eq!(
            matched(&store, "$SYS/#"),
            vec!["$SYS", "$SYS/monitor/Clients"]
        );
    }

    #[test]
    fn set_replaces_and_get_is_exact() {
        let mut store = RetainedStore::new();
        assert_eq!(store.set("a/b", 1), None);
        assert_eq!(store.set("a/b", 2), Some(1));
        assert_eq!(store.len(), 1);
        assert_eq!(store.get("a/b"), Some(&2));
        assert_eq!(store.get("a"), None);
        assert_eq!(store.get("a/b/c"), None);
        assert_eq!(store.get("a/+"), None);
    }

    #[test]
    fn removal_prunes_to_baseline() {
        let mut store = store();
        assert_eq!(store.remove("nope"), None);
        assert_eq!(store.remove("sport/tennis/player1/ranking/x"), None);
        assert_eq!(store.len(), TOPICS.len());
        for (i, t) in TOPICS.iter().enumerate() {
            assert_eq!(store.remove(t), Some(*t));
            assert_eq!(store.remove(t), None);
            for rest in &TOPICS[i + 1..] {
                assert_eq!(store.get(rest), Some(rest));
            }
        }
        assert!(store.is_empty());
        assert_eq!(store.node_count(), 1);
    }

    #[test]
    fn removing_an_interior_message_keeps_children() {
        let mut store = RetainedStore::new();
        store.set("a/b/c", 1);
        store.set("a", 2);
        assert_eq!(store.remove("a"), Some(2));
        assert_eq!(store.get("a/b/c"), Some(&1));
        assert_eq!(store.node_count(), 4);
        assert_eq!(store.remove("a/b/c"), Some(1));
        assert_eq!(store.node_count(), 1);
    }

    #[test]
    fn deep_topics_do_not_overflow_the_stack() {
        let topic = vec!["x"; 200_000].join("/");
        let mut store = RetainedStore::new();
        store.set(&topic, 1);
        let mut hits = 0;
        store.for_each_match("#", |_| hits += 1);
        store.for_each_match(&topic, |_| hits += 1);
        assert_eq!(hits, 2);
        assert_eq!(store.remove(&topic), Some(1));
        store.set(&topic, 2);
        drop(store);
    }
}
