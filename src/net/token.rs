//! The user data of every request the engine submits: which operation, on which socket (slot
//! and generation), packed into the 64 bits io_uring hands back with the completion. A
//! completion whose generation no longer matches its slot belongs to a socket that is gone and
//! is ignored (its provided buffer, if any, is still returned to the ring).

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// Multishot accept on a listener (the slot is the listener's index in the engine).
    Accept = 1,
    /// Multishot receive on a socket.
    Recv = 2,
    /// A send of the socket's in-flight buffer.
    Send = 3,
    /// Cancellation of a socket's receive (reading paused, or closing).
    Cancel = 4,
    /// The read of the shard's doorbell (another thread wakes the shard sleeping in the ring).
    Doorbell = 5,
    /// close(2) of a socket's descriptor (submitted with CQE_SKIP_SUCCESS: only failures
    /// come back).
    Close = 6,
}

/// Largest socket slot a token can carry (24 bits: 16 million sockets per shard).
pub(crate) const MAX_SLOT: u32 = (1 << 24) - 1;

/// A decoded user data value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) op: Op,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

impl Token {
    pub(crate) fn new(op: Op, slot: u32, generation: u32) -> Self {
        debug_assert!(slot <= MAX_SLOT);
        Token {
            op,
            slot,
            generation,
        }
    }

    /// Layout: op in bits 56..64, slot in 32..56, generation in 0..32.
    pub(crate) fn encode(self) -> u64 {
        (u64::from(self.op as u8) << 56)
            | (u64::from(self.slot & MAX_SLOT) << 32)
            | u64::from(self.generation)
    }

    /// `None` for a value the engine never produced.
    pub(crate) fn decode(data: u64) -> Option<Self> {
        let op = match (data >> 56) as u8 {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Cancel,
            5 => Op::Doorbell,
            6 => Op::Close,
            _ => return None,
        };
        Some(Token {
            op,
            slot: ((data >> 32) as u32) & MAX_SLOT,
            generation: data as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_op_and_extreme_values() {
        for op in [
            Op::Accept,
            Op::Recv,
            Op::Send,
            Op::Cancel,
            Op::Doorbell,
            Op::Close,
        ] {
            for (slot, generation) in [(0, 0), (MAX_SLOT, u32::MAX), (12345, 7)] {
                let token = Token::new(op, slot, generation);
                assert_eq!(Token::decode(token.encode()), Some(token));
            }
        }
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(u64::MAX), None);
    }
}
