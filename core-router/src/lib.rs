//! # core-router
//!
//! The routing core of shardmq: pure data structures with no I/O, no threads and no clocks, so
//! they can be tested exhaustively and reused by every shard.
//!
//! ## Ownership model
//! - Each shard owns a [`trie::SubscriptionTrie`] holding only its *local* sessions'
//!   subscriptions: filter -> (session key, options).
//! - Each shard holds a replica of the read-mostly [`interest::InterestIndex`]: filter -> set of
//!   shards that have at least one local subscriber. A shard that gains its first (or loses its
//!   last) subscriber to a filter emits an [`interest::InterestDelta`], which is applied locally
//!   and sent to every peer over the cross-shard queues. A publish is matched once against the
//!   replica on the publishing shard and forwarded once per interested shard, never once per
//!   subscriber.
//! - Retained messages live in a [`retained::RetainedStore`]; the broker keeps a replica per shard
//!   and serialises updates of one topic through that topic's owner shard so every replica applies
//!   them in the same order.
//! - [`topic`] holds the MQTT rules for topic names and filters.
#![warn(missing_docs, missing_debug_implementations)]

pub mod interest;
pub mod retained;
pub mod topic;
pub mod trie;
