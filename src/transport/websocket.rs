//! The WebSocket phase of a connection: frames decoded under the socket's rate limit, the
//! core's budget for partial messages and the message deadline; data messages handed to the
//! Phoenix session (or echoed on `/echo`, or ignored on `/dashboard/live`).

use crate::proto::frame::{self, Message, OpCode, close};
use crate::proto::phoenix::Frame;
use crate::pubsub::session::Ctx;
use crate::runtime::shard::Stats;
use crate::transport::state::{Conn, Endpoint, Phase};

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
    pub(crate) fn on_ws_bytes(&mut self, input: &mut [u8]) {
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
            wire: endpoint.wire(),
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
                (Endpoint::Dashboard, _) => {} // its keep-alives: read, and ignored
                (Endpoint::Phoenix(_), data) => {
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
