//! Where a client id and a topic live among the shards: the one hash every shard of the
//! process (and the store's recovery, which re-homes sessions at start-up) computes the same
//! way. Hash values are never persisted: a data directory written with one shard count is
//! re-homed with these functions by the binary that reads it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

/// SipHash with fixed keys over `bytes`: every shard of the process computes the same value.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// The home shard of `client_id` among `shards` (the shard whose registry arbitrates the id's
/// ownership): `hash(id) % shards`. `shards` of 0 is taken as 1.
pub fn home_shard(client_id: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (stable_hash(client_id.as_bytes()) % shards.max(1) as u64) as usize
}

/// The shard that serialises retained updates of `topic` among `shards`. `shards` of 0 is
/// taken as 1.
pub fn topic_owner(topic: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    (stable_hash(topic.as_bytes()).rotate_left(17) % shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_in_range_and_deterministic() {
        for shards in 1..8 {
            for id in ["a", "sensor-17", "", "ünïcødé"] {
                let home = home_shard(id, shards);
                assert!(home < shards);
                assert_eq!(home, home_shard(id, shards));
                assert!(topic_owner(id, shards) < shards);
            }
        }
        assert_eq!(home_shard("x", 0), 0);
    }
}
