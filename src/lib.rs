//! # shardmq
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker built shard-per-core on io_uring (glommio).
//!
//! ## Layout
//! - [`codec`]: sans-I/O, zero-copy encoder/decoder for every packet of every protocol version.
//! - [`session`]: sans-I/O per-client session state machine (in-flight window, queues, QoS 2).
//! - [`store`]: the durable store's on-disk format and recovery (sans-I/O; not wired yet).
//! - [`placement`]: which shard is a client id's home and a topic's owner.
//! - `core-router` (separate crate): topic trie, replicated interest index, retained store.
//! - [`broker`] and [`config`] (feature `runtime`): the glommio shard runtime, listeners and
//!   cross-shard wiring.
//! - [`metrics`] (feature `runtime`): the Prometheus endpoint (`/metrics`, `/healthz`), served
//!   off the shard threads from the snapshots the shards publish.
//!
//! The codec and the session build without the `runtime` feature: no glommio, no sockets.
#![warn(missing_docs, missing_debug_implementations)]

pub mod acl;
pub mod auth;
pub mod codec;
pub mod placement;
pub mod session;
pub mod store;

#[cfg(feature = "runtime")]
pub mod broker;
#[cfg(feature = "runtime")]
pub mod config;
#[cfg(feature = "runtime")]
pub mod logging;
#[cfg(feature = "runtime")]
pub mod metrics;
#[cfg(feature = "runtime")]
pub mod net;
#[cfg(feature = "runtime")]
pub mod units;
