//! What a core keeps per connection besides the connection task: the outbound queue, the
//! waker, the deadline, signals and readiness bits. 64 bytes (`slot_is_small`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;

/// Signals set on a slot by the core, consumed by the connection task.
pub mod signal {
    /// The slot's deadline passed (the wheel fired).
    pub const TIMER: u8 = 1;
    /// The server is draining: close with 1001.
    pub const DRAIN: u8 = 2;
    /// The outbound queue passed its bound during a fan-out: close with 1013.
    pub const OVERFLOW: u8 = 4;
    /// Disconnected by id (`POST /api/disconnect`): close with 1000, the client reconnects.
    pub const KICK: u8 = 8;
    /// A backend hook this connection waits on has answered (`crate::hooks`).
    pub const HOOK: u8 = 16;
    /// The answer to the HTTP request the connection waits on is queued (a long-poll request
    /// served by the session's core: `pubsub::longpoll`).
    pub const ANSWER: u8 = 32;
}

/// What the core keeps per connection (besides the connection task itself).
///
/// Layout (x86_64): waker 16 + queue 32 + out_bytes 4 + generation 4 + deadline 4 + signals 1 +
/// io 1, padded to 64 bytes. Checked by `slot_is_small` below.
pub struct Slot {
    /// Wakes the connection task when something is queued or a signal is set.
    pub waker: Option<Waker>,
    /// Frames waiting to be written, shared (broadcasts are encoded once for everybody).
    pub outq: VecDeque<Arc<[u8]>>,
    /// Bytes in `outq` not yet written.
    pub out_bytes: u32,
    /// Distinguishes this connection from earlier users of the same slab key.
    pub generation: u32,
    /// Wheel tick at which the connection's current deadline passes; 0 = none.
    pub deadline: u32,
    /// Bit set of [`signal`] values.
    pub signals: u8,
    /// Bit set of [`crate::runtime::reactor::ready`] values: socket readiness, kept by the core's
    /// reactor (and `PARKED` and `HELD`, set by the shard).
    pub io: u8,
}

impl Slot {
    /// Append a frame to the outbound queue, keeping `out_bytes` in step.
    pub fn push(&mut self, frame: Arc<[u8]>) {
        self.out_bytes = self.out_bytes.saturating_add(frame.len() as u32);
        self.outq.push_back(frame);
    }

    /// Offer a broadcast frame from a fan-out: queued (true; the caller wakes the task, at once
    /// or deferred: `Shard::wake_deferred`); or, if it would pass the queue bounds, nothing is
    /// queued and the slot is told to close with 1013 (slow consumer), once, and woken at once.
    pub fn offer(&mut self, frame: &Arc<[u8]>, max_bytes: usize, max_frames: usize) -> bool {
        if self.signals & signal::OVERFLOW != 0 {
            return false;
        }
        if self.out_bytes as usize + frame.len() > max_bytes || self.outq.len() >= max_frames {
            self.signals |= signal::OVERFLOW;
            self.wake();
            return false;
        }
        self.push(frame.clone());
        true
    }

    /// Wake the task, if it is waiting.
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_small() {
        // 16 (waker) + 32 (VecDeque) + 4 + 4 + 4 + 1 + 1, padded to 8.
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        // A slab entry adds its discriminant in the padding.
        assert!(std::mem::size_of::<slab::Slab<Slot>>() <= 40);
    }

    #[test]
    fn offer_queues_within_the_bounds_and_flags_overflow_once() {
        let mut slot = Slot {
            waker: None,
            outq: VecDeque::new(),
            out_bytes: 0,
            generation: 1,
            deadline: 0,
            signals: 0,
            io: 0,
        };
        let f: Arc<[u8]> = Arc::from(vec![0u8; 100]);
        assert!(slot.offer(&f, 250, 10));
        assert!(slot.offer(&f, 250, 10));
        assert!(!slot.offer(&f, 250, 10), "300 bytes would pass 250");
        assert_eq!(slot.signals, signal::OVERFLOW);
        assert_eq!((slot.outq.len(), slot.out_bytes), (2, 200));
        assert!(
            !slot.offer(&Arc::from(vec![0u8; 1]), 250, 10),
            "closing: nothing more"
        );
    }
}
