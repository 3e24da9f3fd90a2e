//! One connection's state machine: HTTP request -> (upgrade) WebSocket -> closing -> done.
//!
//! A connection is one glommio task that owns its socket (a non-blocking `std::net::TcpStream`)
//! and its protocol state; the core's slot ([`crate::runtime::shard::Slot`]) holds the outbound queue, the
//! waker and the readiness bits the core's [`crate::runtime::reactor`] sets. The task is a hand-written
//! `poll` so that a read borrows the core's scratch buffer only for the duration of one
//! non-blocking `recv` and the parse that follows: nothing is held across a wait, so an idle
//! connection holds no read buffer.
//!
//! This file is the task itself: its state, its poll loop (signals, flushing, reading), and
//! closing. What it does with the bytes it reads is in `super::http` (the HTTP phase: requests,
//! keep-alive, the upgrade) and `super::websocket` (frames, the rate limit, the partial-message
//! budget, the Phoenix session).

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::trace;

use crate::proto::frame::{self, FrameError, close};
use crate::proto::handshake;
use crate::pubsub::hub::Hub;
use crate::pubsub::session::Ctx;
use crate::runtime::reactor::ready;
use crate::runtime::shard::{Slot, Stats, WRITE_COALESCE, signal};
use crate::transport::state::{Conn, Endpoint, Phase, RateBucket, Step};

/// Frames at least this big are written straight from their buffer instead of being coalesced.
const DIRECT_WRITE: usize = 16 * 1024;
/// Reads handled in one poll before the task yields to its neighbours.
const READ_BUDGET: usize = 16;

/// Serve one accepted connection (already in slot `key`, watched by the reactor) until it is
/// closed: the returned future is the connection's whole task state (see
/// `connection_task_state_is_small`). Spawned as its own task on the accepting core.
pub fn serve(
    hub: Rc<Hub>,
    stream: TcpStream,
    key: usize,
    generation: u32,
) -> impl Future<Output = ()> {
    let shard = &hub.shard;
    shard.set_deadline(key, Some(shard.cfg.handshake_timeout()));
    let rate = RateBucket::full(shard.cfg.max_messages_per_sec);
    Conn {
        hub,
        stream,
        key,
        generation,
        rate,
        msg_deadline: 0,
        out_off: 0,
        phase: Phase::Http {
            buf: Vec::new(),
            body: None,
            deferred: false,
            served: 0,
            started: 0,
            pipelined: false,
            awaiting: None,
        },
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.leave_open();
        self.forget_hook();
        let write_armed = self
            .hub
            .shard
            .slots
            .borrow()
            .get(self.key)
            .is_some_and(|s| s.io & ready::WRITE_ARMED != 0);
        if let Some(io) = self.hub.shard.io() {
            // Before the socket closes (when `stream` drops, right after this).
            io.forget(self.key, self.generation, write_armed);
        }
        self.hub.shard.close_slot(self.key);
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        match this.step(cx) {
            Poll::Ready(()) => Poll::Ready(()),
            Poll::Pending => {
                if let Some(slot) = this.hub.shard.slots.borrow_mut().get_mut(this.key) {
                    match &slot.waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        _ => slot.waker = Some(cx.waker().clone()),
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Conn {
    fn step(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut reads = 0;
        loop {
            // 1. Signals from the core: deadlines and drain.
            let signals = self.hub.shard.take_signals(self.key);
            if signals & signal::TIMER != 0 && self.hub.shard.deadline_passed(self.key) {
                match self.phase {
                    Phase::Http { .. } => {
                        if self.on_http_deadline() {
                            return Poll::Ready(());
                        }
                    }
                    Phase::Closing { .. } => return Poll::Ready(()),
                    Phase::Open { .. } if self.hub.shard.reads_held() => {
                        // The core stopped reading, not the client: it may well have spoken.
                        let idle = self.hub.shard.cfg.idle_timeout();
                        self.hub.shard.set_deadline(self.key, Some(idle));
                    }
                    Phase::Open { .. } => {
                        Stats::bump(&self.hub.shard.stats.idle_timeouts);
                        self.start_close(close::code::POLICY, "idle timeout");
                    }
                }
            }
            if signals & signal::OVERFLOW != 0 && matches!(self.phase, Phase::Open { .. }) {
                // A slow consumer: drop what it has not started to receive, then close.
                Stats::bump(&self.hub.shard.stats.slow_consumer_closes);
                self.discard_unsent();
                self.start_close(close::code::TRY_AGAIN_LATER, "slow consumer");
            }
            if signals & signal::ANSWER != 0 {
                self.on_longpoll_answered();
            }
            if signals & signal::KICK != 0 && matches!(self.phase, Phase::Open { .. }) {
                self.start_close(close::code::NORMAL, "disconnected");
            }
            if signals & signal::HOOK != 0 {
                self.on_hook_answer();
            }
            if signals & signal::DRAIN != 0 {
                match self.phase {
                    Phase::Http { .. } => return Poll::Ready(()),
                    Phase::Open { .. } => {
                        self.start_close(close::code::GOING_AWAY, "server shutting down")
                    }
                    Phase::Closing { .. } => {}
                }
            }

            // 2. Write what is queued.
            let flushed = match self.poll_flush() {
                Poll::Ready(Ok(())) => true,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Pending => false,
            };
            if let Phase::Closing { shut } = &mut self.phase
                && flushed
                && !*shut
            {
                *shut = true;
                // Half-close: the peer sees our last bytes followed by FIN.
                if self.stream.shutdown(Shutdown::Write).is_ok() {
                    trace!(key = self.key, "write side shut");
                }
            }

            // 3. Nothing more while a long-poll request waits for its session's answer.
            if let Phase::Http {
                awaiting: Some(_), ..
            } = self.phase
            {
                return Poll::Pending;
            }
            // Read, unless our own output is backed up (then the peer waits for us).
            if self.backed_up() && !matches!(self.phase, Phase::Closing { .. }) {
                return Poll::Pending; // the write readiness wakes us
            }
            // 4. Nor while this core's cross-core outboxes are over their mark: what a Phoenix
            //    socket sends next could be a broadcast, so it waits in the kernel (and its sender
            //    slows down) instead of being dropped on the way to another core. The end of the
            //    hold wakes every parked connection (`Shard::park`).
            let publisher = match &self.phase {
                Phase::Open { endpoint, .. } => matches!(endpoint, Endpoint::Phoenix(_)),
                Phase::Http { deferred, .. } => *deferred,
                Phase::Closing { .. } => false,
            };
            if publisher && self.hub.shard.reads_held() {
                if self.hub.shard.park(self.key) {
                    // The client's messages wait in the kernel from here on, at whatever rate it
                    // sends them: its bucket earns the time held without its one-second cap, and
                    // is capped again once the socket has been read dry (`on_ws_bytes`).
                    self.refill_rate(false);
                }
                return Poll::Pending;
            }
            if let Phase::Http { deferred, .. } = &mut self.phase
                && *deferred
            {
                *deferred = false;
                self.on_http_bytes(); // the request is complete: this routes it
                continue;
            }
            if self.waits_for_hook() {
                return Poll::Pending; // read again once the backend has answered
            }
            if reads == READ_BUDGET {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            if let Phase::Http {
                pipelined: true, ..
            } = self.phase
            {
                // Keep-alive: requests already received were held back behind our answers;
                // those are flushed now, so serve the held ones before reading more.
                self.on_http_bytes();
                continue;
            }
            match self.poll_read_and_handle() {
                Poll::Ready(Step::Continue) => continue,
                Poll::Ready(Step::Finished) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// The outbound queue is at its bound: no more reading (or answering) until it drains.
    pub(crate) fn backed_up(&self) -> bool {
        let slots = self.hub.shard.slots.borrow();
        slots.get(self.key).is_some_and(|s| {
            s.out_bytes as usize >= self.hub.shard.cfg.out_queue_max_bytes
                || s.outq.len() >= self.hub.shard.cfg.out_queue_max_frames
        })
    }

    /// Read once into the core's scratch buffer and act on the bytes before returning. Pending
    /// when the socket has nothing: the reactor wakes the task when it has.
    fn poll_read_and_handle(&mut self) -> Poll<Step> {
        let shard = self.hub.shard.clone();
        {
            let mut slots = shard.slots.borrow_mut();
            let Some(slot) = slots.get_mut(self.key) else {
                return Poll::Ready(Step::Finished);
            };
            if slot.io & ready::REARM != 0 {
                slot.io &= !ready::REARM;
                if let Some(io) = shard.io() {
                    io.watch(&self.stream, self.key, self.generation);
                }
            }
            if slot.io & ready::READABLE == 0 {
                return Poll::Pending;
            }
        }
        let mut scratch = shard.scratch.borrow_mut();
        let n = match (&self.stream).read(&mut scratch[..]) {
            Ok(0) => return Poll::Ready(Step::Finished),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if let Some(slot) = shard.slots.borrow_mut().get_mut(self.key) {
                    // Read dry: whatever piled up during a hold has been taken.
                    slot.io &= !(ready::READABLE | ready::HELD);
                }
                return Poll::Pending;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => return Poll::Ready(Step::Continue),
            Err(_) => return Poll::Ready(Step::Finished),
        };
        let input = &mut scratch[..n];
        let step = match &mut self.phase {
            Phase::Http {
                buf,
                served,
                started,
                ..
            } => {
                if *served > 0 && buf.is_empty() {
                    // The next request on a kept-alive connection begins (see on_http_deadline).
                    *started = shard.now_tick() as u32;
                }
                // Bounded: until the head is accepted, parse_request fails with TooLarge once it
                // passes its limit, so `buf` holds at most that limit plus one read; after it,
                // the reserved body plus at most one read past it (the next request's bytes,
                // kept for keep-alive).
                buf.extend_from_slice(input);
                self.on_http_bytes()
            }
            Phase::Open { .. } => {
                self.on_ws_bytes(input);
                Step::Continue
            }
            Phase::Closing { .. } => Step::Continue, // discard until EOF or deadline
        };
        Poll::Ready(step)
    }

    /// Leave the Open phase: the socket's channels are left and the gauges updated.
    pub(crate) fn leave_open(&mut self) {
        if let Phase::Open {
            session,
            decoder,
            endpoint,
        } = &mut self.phase
        {
            if *endpoint == Endpoint::Dashboard {
                crate::http::dashboard::unwatch(&self.hub, self.key, self.generation);
            }
            self.hub.shard.hold_partial(decoder.heap_bytes(), 0);
            session.leave_all(Ctx {
                hub: &self.hub,
                key: self.key,
                generation: self.generation,
                wire: endpoint.wire(),
            });
            Stats::sub(&self.hub.shard.stats.websockets, 1);
            self.phase = Phase::Closing { shut: false };
        }
    }

    /// Drop every queued frame not yet started (the one being written is kept whole).
    pub(crate) fn discard_unsent(&mut self) {
        let mut slots = self.hub.shard.slots.borrow_mut();
        if let Some(slot) = slots.get_mut(self.key) {
            let keep = usize::from(self.out_off > 0);
            slot.outq.truncate(keep);
            slot.out_bytes = slot
                .outq
                .front()
                .map_or(0, |f| (f.len() - self.out_off as usize) as u32);
        }
    }

    pub(crate) fn fail(&mut self, e: &FrameError) {
        trace!(key = self.key, error = %e, "closing on protocol error");
        let reason = match e {
            FrameError::Protocol(why) => why,
            FrameError::InvalidUtf8 => "invalid utf-8",
            FrameError::TooBig => "message too big",
            FrameError::OverBudget => {
                Stats::bump(&self.hub.shard.stats.partial_budget_closes);
                "server busy: partial message budget"
            }
        };
        self.start_close(e.close_code(), reason);
    }

    /// Queue a close frame and move to Closing (no-op if already closing).
    pub(crate) fn start_close(&mut self, code: u16, reason: &str) {
        if matches!(self.phase, Phase::Closing { .. }) {
            return;
        }
        self.leave_open();
        let mut out = Vec::with_capacity(4 + reason.len());
        frame::encode_close(&mut out, code, reason);
        self.enqueue(out);
        self.hub.shard.stats.close_sent(code);
        self.close_after_queued();
    }

    /// Queue a plain HTTP response and close after it.
    pub(crate) fn respond(
        &mut self,
        status: u16,
        ctype: &str,
        body: &[u8],
        extra: &[(&str, &str)],
    ) {
        let mut out = Vec::with_capacity(160 + body.len());
        handshake::write_response(&mut out, status, ctype, body, extra, false);
        self.enqueue(out);
        self.close_after_queued();
    }

    /// Move to Closing behind what is queued, with the close deadline running.
    pub(crate) fn close_after_queued(&mut self) {
        self.phase = Phase::Closing { shut: false };
        self.hub
            .shard
            .set_deadline(self.key, Some(self.hub.shard.cfg.close_timeout()));
    }

    pub(crate) fn enqueue(&mut self, bytes: Vec<u8>) {
        self.hub.shard.queue_own(self.key, Arc::from(bytes));
    }

    /// Write queued frames until the queue is empty (Ready(Ok)) or the socket is full (Pending,
    /// with a write poll armed).
    fn poll_flush(&mut self) -> Poll<std::io::Result<()>> {
        loop {
            let mut slots = self.hub.shard.slots.borrow_mut();
            let Some(slot) = slots.get_mut(self.key) else {
                return Poll::Ready(Ok(()));
            };
            let Some(front) = slot.outq.front() else {
                if slot.outq.capacity() > 0 {
                    slot.outq = Default::default(); // idle connections hold no queue memory
                }
                return Poll::Ready(Ok(()));
            };
            let off = self.out_off as usize;
            let result = if front.len() - off >= DIRECT_WRITE || slot.outq.len() == 1 {
                (&self.stream).write(&front[off..])
            } else {
                let mut wbuf = self.hub.shard.wbuf.borrow_mut();
                wbuf.clear();
                wbuf.extend_from_slice(&front[off..]);
                for f in slot.outq.iter().skip(1) {
                    if wbuf.len() + f.len() > WRITE_COALESCE {
                        break;
                    }
                    wbuf.extend_from_slice(f);
                }
                (&self.stream).write(&wbuf)
            };
            let written = match result {
                Ok(0) => return Poll::Ready(Err(ErrorKind::WriteZero.into())),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.wait_writable(slot);
                    return Poll::Pending;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            };
            slot.out_bytes = slot.out_bytes.saturating_sub(written as u32);
            Stats::add(&self.hub.shard.stats.bytes_out, written as u64);
            let mut left = written;
            while left > 0 {
                let Some(front) = slot.outq.front() else {
                    break;
                };
                let remaining = front.len() - self.out_off as usize;
                if left >= remaining {
                    left -= remaining;
                    self.out_off = 0;
                    slot.outq.pop_front();
                } else {
                    self.out_off += left as u32;
                    left = 0;
                }
            }
        }
    }

    /// The socket is full: have the reactor wake us when it has room (once per wait).
    fn wait_writable(&self, slot: &mut Slot) {
        if slot.io & ready::WRITE_ARMED == 0
            && let Some(io) = self.hub.shard.io()
        {
            slot.io |= ready::WRITE_ARMED;
            Stats::bump(&self.hub.shard.stats.write_polls);
            io.want_write(&self.stream, self.key, self.generation);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_task_state_is_small() {
        // The task's own state (the future `serve` returns is the `Conn` itself): socket, core
        // handle, slot key, generation, rate bucket, message deadline, write offset, phase.
        // Budget (x86_64): phase 104 (decoder 56 + session 40 + endpoint/discriminant 8) +
        // shard 8 + socket 4 + key 8 + generation 4 + rate 8 + message deadline 4 + offset 4 =
        // 144 (the deadline took the padding).
        // glommio adds a 40-byte task header and its scheduling handle around it.
        let conn = std::mem::size_of::<Conn>();
        let phase = std::mem::size_of::<Phase>();
        println!("Conn {conn} B, Phase {phase} B");
        assert_eq!(
            std::mem::size_of::<TcpStream>(),
            4,
            "the socket is a bare descriptor"
        );
        assert!(phase <= 104, "Phase is {phase} bytes");
        assert!(conn <= 144, "Conn is {conn} bytes");
    }
}
