//! The WebSocket phase of a connection: frames decoded under the socket's rate limit, the
//! core's budget for partial messages and the message deadline; data messages handed to the
//! Phoenix session (or echoed on `/echo`).

use crate::proto::frame::{self, Message, OpCode, close};
use crate::proto::phoenix::Frame;
use crate::pubsub::session::Ctx;
use crate::runtime::shard::Stats;
use crate::transport::conn::{Conn, Endpoint, Phase};

impl Conn {
    /// Refill the socket's rate bucket up to now (see [`RateBucket::refill`]); `held`: its
    /// socket has not been read dry since the core's mesh hold parked it.
    pub(super) fn refill_rate(&mut self, held: bool) {
        let rate = self.hub.shard.cfg.max_messages_per_sec;
        if rate > 0 {
            self.rate
                .refill(rate, self.hub.shard.now_tick() as u32, held);
        }
    }

    /// Decode frames and act on each message, under the socket's rate limit, the core's budget
    /// for partial messages and the message deadline.
    pub(super) fn on_ws_bytes(&mut self, input: &mut [u8]) {
        let Phase::Open {
            endpoint,
            decoder,
            session,
        } = &mut self.phase
        else {
            return;
        };
        let endpoint = *endpoint;
        let shard = &*self.hub.shard;
        let ctx = Ctx {
            hub: &self.hub,
            key: self.key,
            generation: self.generation,
        };
        let now = shard.now_tick() as u32;
        let rate = shard.cfg.max_messages_per_sec;
        if rate > 0 {
            self.rate.refill(rate, now, shard.held(self.key));
        }
        // This socket may hold what the core's budget has left, besides what it holds now.
        let held_before = decoder.heap_bytes();
        let held_elsewhere = shard.partial_bytes().saturating_sub(held_before);
        let limits = frame::Limits {
            max_buffered: shard
                .cfg
                .max_partial_bytes_per_core
                .saturating_sub(held_elsewhere),
            ..shard.cfg.frame_limits()
        };
        let bucket = &mut self.rate;
        let mut peer_close: Option<Option<u16>> = None;
        let mut app_close: Option<(u16, &'static str)> = None;
        let mut frames_in = 0u64;
        let mut data_done = false;
        let echo = |op: OpCode, payload: &[u8]| {
            let Ok(frame) = shard.build_frame(op, |b| {
                b.extend_from_slice(payload);
                Ok::<(), std::convert::Infallible>(())
            });
            shard.enqueue(ctx.key, frame);
        };
        // One call per frame of any kind (a fragment too): each costs one from the bucket.
        let result = decoder.feed(input, &limits, &mut |msg| {
            frames_in += 1;
            if app_close.is_some() {
                return; // closing: ignore what follows
            }
            if rate > 0 && !bucket.take() {
                app_close = Some((close::code::POLICY, "rate limit"));
                return;
            }
            let data = match msg {
                Message::Text(t) => Frame::Text(t),
                Message::Binary(b) => Frame::Binary(b),
                Message::Fragment => return,
                Message::Ping(p) => return echo(OpCode::Pong, p),
                Message::Pong(_) => return,
                Message::Close(c) => {
                    peer_close = Some(c.map(|c| c.code));
                    return;
                }
            };
            data_done = true;
            match (endpoint, data) {
                (Endpoint::Echo, Frame::Text(t)) => echo(OpCode::Text, t.as_bytes()),
                (Endpoint::Echo, Frame::Binary(b)) => echo(OpCode::Binary, b),
                (Endpoint::Phoenix, data) => {
                    if let Err(close) = session.on_frame(ctx, data) {
                        app_close = Some(close);
                    }
                }
            }
        });
        Stats::add(&shard.stats.frames_in, frames_in);
        shard.hold_partial(held_before, decoder.heap_bytes());
        // The message deadline runs from the read that brought a data message's first bytes
        // until the read that completes it. While the same message stays incomplete, nothing
        // (pings included) pushes the idle deadline: a peer that starts a message and then only
        // pings is closed at the message deadline, one that goes silent at the idle timeout.
        let mut timed_out = false;
        if !decoder.message_pending() {
            self.msg_deadline = 0;
            shard.extend_deadline(self.key, shard.cfg.idle_timeout());
        } else if self.msg_deadline == 0 || data_done {
            let at = shard.deadline_tick(shard.cfg.message_timeout());
            self.msg_deadline = at.clamp(1, u64::from(u32::MAX)) as u32;
            shard.extend_deadline(self.key, shard.cfg.idle_timeout());
        } else {
            timed_out = now >= self.msg_deadline;
        }
        if let Err(e) = result {
            self.fail(&e);
        } else if let Some((code, reason)) = app_close {
            self.start_close(code, reason);
        } else if timed_out {
            Stats::bump(&self.hub.shard.stats.message_timeouts);
            self.start_close(close::code::POLICY, "message timeout");
        } else if let Some(code) = peer_close {
            // Echo the peer's code (RFC 6455 5.5.1), then close.
            self.start_close(code.unwrap_or(close::code::NORMAL), "");
        }
    }
}

/// Token bucket of one socket for `max_messages_per_sec`: it holds one second's worth and
/// refills on the core's 100 ms ticks. Counted in tenths of a frame, so a tick refills exactly
/// `rate` tenths whatever the rate (no rounding away of 1.5 frames a tick at 15/s).
///
/// While the core does not read the socket because its mesh holds publishers back, the client's
/// messages wait in the kernel and are then read at once: measured at the read, a client that
/// sends at the rate would look like a burst of everything it sent during the hold, and one held
/// longer than a second would be closed for it. So the time held is earned past the cap (only
/// that time: the socket's bucket is brought up to date, capped, when it is parked), and the cap
/// applies again once the socket has been read dry: a client still gets no more than the rate
/// over the hold plus the one-second burst.
#[derive(Debug, Clone, Copy)]
pub(super) struct RateBucket {
    /// Tenths of a frame left.
    left: u32,
    /// Tick of the last refill.
    tick: u32,
}

impl RateBucket {
    /// A full bucket for `rate` frames a second (`rate` is at most 1,000,000: see config).
    pub(super) fn full(rate: u32) -> RateBucket {
        RateBucket {
            left: rate.saturating_mul(10),
            tick: 0,
        }
    }

    /// Add what the ticks since the last refill earned, up to one second's worth; past it while
    /// `held` (the socket is being held or has not been read dry since: see above).
    pub(super) fn refill(&mut self, rate: u32, now: u32, held: bool) {
        let ticks = now.wrapping_sub(self.tick);
        let earned = u64::from(ticks) * u64::from(rate);
        let cap = if held {
            u64::from(u32::MAX)
        } else {
            u64::from(rate) * 10
        };
        self.left = (u64::from(self.left) + earned).min(cap) as u32;
        self.tick = now;
    }

    /// Spend one frame; false when the bucket is empty.
    pub(super) fn take(&mut self) -> bool {
        let ok = self.left >= 10;
        if ok {
            self.left -= 10;
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames a bucket lets through over `ticks` ticks, offered `per_tick` every tick.
    fn passed(rate: u32, per_tick: u32, ticks: u32) -> u32 {
        let mut b = RateBucket::full(rate);
        let mut n = 0;
        for t in 1..=ticks {
            b.refill(rate, t, false);
            n += (0..per_tick).filter(|_| b.take()).count() as u32;
        }
        n
    }

    #[test]
    fn time_held_is_earned_past_the_cap_until_read_dry() {
        let mut b = RateBucket::full(10);
        b.refill(10, 0, false);
        assert!((0..4).all(|_| b.take()), "6 frames left");
        // Parked at tick 5 (brought up to date, capped: 10), held until tick 35: 30 more.
        b.refill(10, 5, false);
        b.refill(10, 35, true);
        assert_eq!((0..100).filter(|_| b.take()).count(), 40);
        // Held again, 2 s, 5 frames used; read dry, the rest beyond the cap is gone.
        b.refill(10, 55, true);
        assert!((0..5).all(|_| b.take()));
        b.refill(10, 55, false);
        assert_eq!((0..100).filter(|_| b.take()).count(), 10);
    }

    #[test]
    fn rate_bucket_is_exact_at_any_rate() {
        // A burst of one second's worth, then `rate` a second.
        let mut b = RateBucket::full(200);
        b.refill(200, 0, false);
        assert_eq!((0..1000).filter(|_| b.take()).count(), 200);
        // Offered far more than the rate for 10 s: the full bucket spent on the first tick,
        // then what the other 99 ticks refilled.
        for rate in [1, 5, 10, 15, 19, 200, 1_000_000] {
            let got = passed(rate, rate + 10, 100);
            assert_eq!(got, rate + rate * 99 / 10, "rate {rate}");
        }
        // Offered 1.5 frames a tick (15/s) at a rate of 15: never refused.
        let mut b = RateBucket::full(15);
        for t in 1..=200u32 {
            b.refill(15, t, false);
            let n = if t % 2 == 0 { 2 } else { 1 };
            assert!((0..n).all(|_| b.take()), "tick {t}");
        }
    }
}
