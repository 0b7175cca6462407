//! # shardmq
//!
//! An MQTT 3.1 / 3.1.1 / 5.0 broker built shard-per-core on io_uring (glommio).
//!
//! ## Layout
//! - [`codec`]: sans-I/O, zero-copy encoder/decoder for every packet of every protocol version.
//!   Builds without the `runtime` feature (no glommio, no sockets).
//! - `core-router` (separate crate): topic trie, replicated interest index, retained store.
#![warn(missing_docs, missing_debug_implementations)]

pub mod codec;
pub mod session;
