//! One connection's state machine: HTTP request -> (upgrade) WebSocket -> closing -> done.
//!
//! A connection is one glommio task that owns its socket (a non-blocking `std::net::TcpStream`)
//! and its protocol state; the core's slot ([`crate::runtime::shard::Slot`]) holds the outbound queue, the
//! waker and the readiness bits the core's [`crate::runtime::reactor`] sets. The task is a hand-written
//! `poll` so that a read borrows the core's scratch buffer only for the duration of one
//! non-blocking `recv` and the parse that follows: nothing is held across a wait, so an idle
//! connection holds no read buffer.

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};

use tracing::trace;

use crate::app::auth;
use crate::app::handler::ConnectInfo;
use crate::http::{self, Answer, Api, BodyReservation, Format, Plan, Refusal};
use crate::proto::frame::{self, Decoder, FrameError, Message, OpCode, close};
use crate::proto::handshake::{self, HttpError, Request};
use crate::proto::phoenix::Frame;
use crate::pubsub::hub::Hub;
use crate::pubsub::session::{Ctx, Session};
use crate::runtime::reactor::ready;
use crate::runtime::shard::{Slot, Stats, WRITE_COALESCE, signal};
use crate::runtime::wheel::TICK;

/// Frames at least this big are written straight from their buffer instead of being coalesced.
const DIRECT_WRITE: usize = 16 * 1024;
/// Reads handled in one poll before the task yields to its neighbours.
const READ_BUDGET: usize = 16;

/// What a WebSocket connection does with its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /echo`: send every data message back.
    Echo,
    /// `GET /socket/websocket?vsn=2.0.0`: Phoenix Channels V2.
    Phoenix,
}

enum Phase {
    /// Reading the request head, then (`body` set: the head was accepted) its body. Once the
    /// request is answered `buf` keeps only bytes already received past it (a pipelined next
    /// request) on a kept-alive connection, nothing otherwise: an idle kept-alive connection
    /// holds no buffer.
    /// `deferred`: a complete upgrade request with frames behind it waits in `buf` for the
    /// core's mesh hold to end (those frames could be broadcasts; see `on_http_request`).
    Http {
        buf: Vec<u8>,
        body: Option<Box<PendingBody>>,
        deferred: bool,
        /// Requests answered on this connection so far (keep-alive).
        served: u32,
        /// After the first: the tick the current request's first byte came in.
        started: u32,
        /// Complete requests wait in `buf`, held back while the answers before them were over
        /// the out-queue bounds: serve them before reading the socket again.
        pipelined: bool,
    },
    /// An open WebSocket.
    Open {
        endpoint: Endpoint,
        decoder: Decoder,
        session: Session,
    },
    /// Our last bytes (a close frame or an HTTP response) are queued: flush them, shut the write
    /// side, then read and discard until the peer closes or the close deadline passes.
    Closing { shut: bool },
}

/// A request whose head was accepted and whose body is being read into the phase's `buf`
/// (`req.head_len` bytes of head, then the body). Holds its bytes of the core's body budget
/// until it is dropped: when answered, or with the connection, whichever way it ends.
struct PendingBody {
    req: Request,
    api: Api,
    format: Format,
    reservation: BodyReservation,
}

impl PendingBody {
    /// Bytes of head and body: `buf` is complete at this length.
    fn end(&self) -> usize {
        self.req.head_len + self.reservation.bytes()
    }
}

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
        },
    }
}

struct Conn {
    /// The core: its pub/sub hub and, through it, its runtime shard.
    hub: Rc<Hub>,
    stream: TcpStream,
    key: usize,
    generation: u32,
    /// `max_messages_per_sec`.
    rate: RateBucket,
    /// Tick by which the data message now arriving must be complete (`message_timeout_ms`
    /// after its first bytes); 0 while no data message is pending.
    msg_deadline: u32,
    /// Bytes of the front frame of the queue already written.
    out_off: u32,
    phase: Phase,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.leave_open();
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

/// What reading and parsing asked the loop to do next.
enum Step {
    Continue,
    Finished,
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

            // 3. Read, unless our own output is backed up (then the peer waits for us).
            if self.backed_up() && !matches!(self.phase, Phase::Closing { .. }) {
                return Poll::Pending; // the write readiness wakes us
            }
            // 4. Nor while this core's cross-core outboxes are over their mark: what a Phoenix
            //    socket sends next could be a broadcast, so it waits in the kernel (and its sender
            //    slows down) instead of being dropped on the way to another core. The end of the
            //    hold wakes every parked connection (`Shard::park`).
            let publisher = match &self.phase {
                Phase::Open { endpoint, .. } => *endpoint == Endpoint::Phoenix,
                Phase::Http { deferred, .. } => *deferred,
                Phase::Closing { .. } => false,
            };
            if publisher && self.hub.shard.reads_held() {
                self.hub.shard.park(self.key);
                return Poll::Pending;
            }
            if let Phase::Http { deferred, .. } = &mut self.phase
                && *deferred
            {
                *deferred = false;
                self.on_http_bytes(); // the request is complete: this routes it
                continue;
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
    fn backed_up(&self) -> bool {
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
                    slot.io &= !ready::READABLE;
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

    /// Serve the requests buffered in the HTTP phase, in their order (keep-alive, pipelining):
    /// until one is incomplete, the connection leaves the HTTP phase (upgrade, close), or the
    /// answers queued reach the out-queue bounds; then the rest waits in `buf` (`pipelined`)
    /// and is served before the socket is read again.
    fn on_http_bytes(&mut self) -> Step {
        loop {
            if let Phase::Http { pipelined, .. } = &mut self.phase {
                *pipelined = false;
            }
            if !self.on_http_request() {
                return Step::Continue;
            }
            if self.backed_up() {
                if let Phase::Http { pipelined, .. } = &mut self.phase {
                    *pipelined = true;
                }
                return Step::Continue;
            }
        }
    }

    /// Parse the request at the front of `buf` and act on it at once (see [`http::plan`]):
    /// refuse, answer, upgrade, or (an accepted API call) reserve its body's bytes and read it;
    /// once the body is complete, answer it. True when there is more to do with `buf` now (a
    /// kept-alive answer with bytes of the next request behind it, or a body to check).
    fn on_http_request(&mut self) -> bool {
        let Phase::Http {
            buf,
            body,
            deferred,
            ..
        } = &mut self.phase
        else {
            return false;
        };
        if body.as_ref().is_some_and(|p| buf.len() < p.end()) {
            return false; // the body is still coming
        }
        if let Some(pending) = body.take() {
            let mut buf = std::mem::take(buf);
            let rest = buf.split_off(pending.end()); // the next request's bytes, if any
            let body = &buf[pending.req.head_len..];
            let a = match pending.api {
                Api::Broadcast => crate::http::api::broadcast(&self.hub, body, pending.format),
            };
            let keep = http::keep_alive(&pending.req, &self.hub.shard.cfg, true);
            let head_only = pending.req.method == "HEAD";
            drop(pending); // its budget is given back once answered
            return self.answer(head_only, &a, &[], keep, rest);
        }
        let req = match handshake::parse_request(buf, self.hub.shard.cfg.max_request_head) {
            Ok(None) => return false,
            Ok(Some(req)) => req,
            Err(e) => {
                let status = match e {
                    HttpError::TooLarge => 431,
                    HttpError::Malformed(_) => 400,
                };
                self.respond(status, "text/plain", e.to_string().as_bytes(), &[]);
                return false;
            }
        };
        Stats::bump(&self.hub.shard.stats.http_requests);
        let stream = &self.stream;
        let peer = || stream.peer_addr().ok().map(|a| a.ip());
        let (a, extra) = match http::plan(&req, &self.hub.shard.cfg, peer) {
            Plan::Refuse(refusal) => (refusal.answer(), refusal.headers),
            Plan::Health => {
                let (id, n) = (self.hub.shard.id, self.hub.shard.connections());
                let body = format!(r#"{{"status":"ok","core":{id},"connections":{n}}}"#);
                (Answer::json(200, &body), &[][..])
            }
            Plan::Metrics => (crate::http::metrics::metrics(&self.hub), &[][..]),
            Plan::Phoenix => {
                if buf.len() > req.head_len && self.hub.shard.reads_held() {
                    // Frames sent right behind an upgrade would be handled before the socket's
                    // first read, so past the mesh's read gate: the request waits whole until
                    // the hold ends.
                    *deferred = true;
                    return false;
                }
                let mut rest = buf.split_off(req.head_len);
                self.phoenix_upgrade(&req, &mut rest);
                return false;
            }
            Plan::Echo => {
                let mut rest = buf.split_off(req.head_len);
                self.upgrade(&req, Endpoint::Echo, None, None, &mut rest);
                return false;
            }
            Plan::Body { api, format, len } => {
                let limit = self.hub.shard.cfg.max_body_bytes_in_flight;
                let Some(reservation) = BodyReservation::take(&self.hub.shard.stats, limit, len)
                else {
                    self.refuse(&Refusal::BUSY);
                    return false;
                };
                let end = req.head_len + len;
                buf.reserve_exact(end.saturating_sub(buf.len()));
                let waiting = req.expect_continue && buf.len() == req.head_len && len > 0;
                *body = Some(Box::new(PendingBody {
                    req,
                    api,
                    format,
                    reservation,
                }));
                if waiting {
                    // The client holds its body back until it hears that it may send it.
                    self.enqueue(handshake::CONTINUE.to_vec());
                }
                return true; // the body may be here already
            }
        };
        // Answered from the head: kept alive only if no body was announced (it is never read).
        let keep = http::keep_alive(&req, &self.hub.shard.cfg, false);
        let rest = buf.split_off(req.head_len);
        self.answer(req.method == "HEAD", &a, extra, keep, rest)
    }

    /// Answer a plain HTTP request (see [`http::write_answer`]). Kept alive (`keep`, and the
    /// core is not draining): the connection stays in the HTTP phase with `rest` (the bytes
    /// already received past this request) as its buffer and `http_keepalive_ms` to send the
    /// next request; true if `rest` holds some of it. Otherwise it closes after the answer.
    fn answer(
        &mut self,
        head_only: bool,
        a: &Answer,
        extra: &[(&str, &str)],
        keep: bool,
        rest: Vec<u8>,
    ) -> bool {
        let shard = self.hub.shard.clone();
        let wait = shard
            .cfg
            .http_keepalive()
            .filter(|_| keep && !shard.is_draining());
        let mut out = Vec::with_capacity(192 + a.body.len());
        http::write_answer(&mut out, head_only, a, extra, wait);
        self.enqueue(out);
        let (
            Some(wait),
            Phase::Http {
                buf,
                served,
                started,
                ..
            },
        ) = (wait, &mut self.phase)
        else {
            self.close_after_queued();
            return false;
        };
        *buf = rest; // exactly the bytes past this request: nothing when it was the last
        *started = shard.now_tick() as u32;
        *served = served.saturating_add(1);
        // After the first answer deadlines only move later (answer time + wait): extending the
        // slot's deadline is enough. The first moves it before the handshake timeout's wheel
        // entry, so it needs an entry of its own.
        if *served == 1 {
            shard.set_deadline(self.key, Some(wait));
        } else {
            shard.extend_deadline(self.key, wait);
        }
        !buf.is_empty()
    }

    /// The HTTP phase's deadline has passed; true: drop the connection. On the first request
    /// that is the handshake timeout. On a kept-alive connection waiting for its next request,
    /// the keep-alive wait is over: closed without a word. One whose next request is under way
    /// gives that request `handshake_timeout_ms` from its first byte (`started`).
    fn on_http_deadline(&mut self) -> bool {
        let Phase::Http {
            buf,
            body,
            served,
            started,
            ..
        } = &self.phase
        else {
            return false;
        };
        if *served > 0 && buf.is_empty() && body.is_none() {
            trace!(key = self.key, "keep-alive wait over");
            return true;
        }
        if *served > 0 {
            let age = TICK * (self.hub.shard.now_tick() as u32).wrapping_sub(*started);
            if let Some(next) = http::recheck_after(age, &self.hub.shard.cfg) {
                self.hub.shard.set_deadline(self.key, Some(next));
                return false;
            }
        }
        Stats::bump(&self.hub.shard.stats.handshake_timeouts);
        trace!(key = self.key, "handshake timeout");
        true
    }

    /// Answer a refused request and close (its body, if any, is never read).
    fn refuse(&mut self, refusal: &Refusal) {
        let (content_type, body) = refusal.body();
        self.respond(refusal.status, content_type, &body, refusal.headers);
    }

    /// Phoenix's connect: transport version, token, the handler's verdict; then the upgrade.
    fn phoenix_upgrade(&mut self, req: &Request, rest: &mut [u8]) {
        // Like Phoenix: the serializer is chosen by `vsn` (default 1.0.0); we speak V2 only.
        let vsn = handshake::query_param(&req.query, "vsn").unwrap_or_else(|| "1.0.0".into());
        if !(vsn == "2.0.0" || vsn.starts_with("2.0.")) {
            self.respond(403, "text/plain", b"unsupported vsn: use vsn=2.0.0\n", &[]);
            return;
        }
        if !self.hub.shard.cfg.origin_allowed(req.origin.as_deref()) {
            self.respond(403, "text/plain", b"origin not allowed\n", &[]);
            return;
        }
        // phoenix.js offers "phoenix" next to its bearer subprotocol and needs it echoed. Without
        // it we could choose no subprotocol, and a browser fails a handshake that answers an
        // offer with none: refuse with the reason instead.
        let offers_phoenix = req.protocols.iter().any(|p| p == "phoenix");
        let offers_bearer = req
            .protocols
            .iter()
            .any(|p| p.starts_with(handshake::PHX_BEARER_PREFIX));
        if offers_bearer && !offers_phoenix {
            let why = b"the base64url.bearer.phx. token subprotocol must be offered together with \"phoenix\"\n";
            self.respond(400, "text/plain", why, &[]);
            return;
        }
        let token = handshake::query_param(&req.query, "token")
            .or_else(|| handshake::bearer_token_from_protocols(&req.protocols));
        let cfg = &self.hub.shard.cfg;
        let claims = match (&cfg.auth_secret, token) {
            (Some(secret), Some(token)) => {
                let (now, max_age) = (auth::now_unix(), cfg.token_max_age_secs);
                match auth::verify(secret.as_bytes(), &token, now, max_age) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        // Never log the token itself.
                        trace!(key = self.key, error = %e, "token refused");
                        self.respond(403, "text/plain", b"invalid token\n", &[]);
                        return;
                    }
                }
            }
            _ => None,
        };
        if cfg.require_token && claims.is_none() {
            self.respond(403, "text/plain", b"token required\n", &[]);
            return;
        }
        let info = ConnectInfo {
            claims: claims.as_ref(),
            query: &req.query,
            origin: req.origin.as_deref(),
        };
        // A panic in the handler counts like one at any other call site (`Hub::guard`).
        if self.hub.guard(|h| h.connect(&info)) != Some(true) {
            self.respond(403, "text/plain", b"connection refused\n", &[]);
            return;
        }
        let protocol = offers_phoenix.then_some("phoenix");
        let user = claims.as_ref().map(|c| c.sub.as_str());
        self.upgrade(req, Endpoint::Phoenix, protocol, user, rest);
    }

    /// Answer the opening handshake and switch to WebSocket.
    fn upgrade(
        &mut self,
        req: &Request,
        endpoint: Endpoint,
        protocol: Option<&str>,
        user: Option<&str>,
        rest: &mut [u8],
    ) {
        let key = match handshake::check_upgrade(req) {
            Ok(k) => k,
            Err(e) => {
                let msg = format!("{e}\n");
                self.respond(e.status(), "text/plain", msg.as_bytes(), e.headers());
                return;
            }
        };
        let mut out = Vec::with_capacity(192);
        let core = self.hub.shard.id.to_string();
        let extra = [("x-corecast-core", core.as_str())];
        handshake::write_switching(&mut out, &handshake::accept_key(key), protocol, &extra);
        self.enqueue(out);
        Stats::bump(&self.hub.shard.stats.upgraded);
        Stats::bump(&self.hub.shard.stats.websockets);
        // Both endpoints: an echo socket holds a slot and a descriptor like any other.
        self.hub
            .shard
            .set_deadline(self.key, Some(self.hub.shard.cfg.idle_timeout()));
        self.phase = Phase::Open {
            endpoint,
            decoder: Decoder::new(),
            session: Session::new(user),
        };
        if !rest.is_empty() {
            // Frames sent right behind the request, before our 101 was read.
            self.on_ws_bytes(rest);
        }
    }

    /// Decode frames and act on each message, under the socket's rate limit, the core's budget
    /// for partial messages and the message deadline.
    fn on_ws_bytes(&mut self, input: &mut [u8]) {
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
            self.rate.refill(rate, now);
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

    /// Leave the Open phase: the socket's channels are left and the gauges updated.
    fn leave_open(&mut self) {
        if let Phase::Open {
            session, decoder, ..
        } = &mut self.phase
        {
            self.hub.shard.hold_partial(decoder.heap_bytes(), 0);
            session.leave_all(Ctx {
                hub: &self.hub,
                key: self.key,
                generation: self.generation,
            });
            Stats::sub(&self.hub.shard.stats.websockets, 1);
            self.phase = Phase::Closing { shut: false };
        }
    }

    /// Drop every queued frame not yet started (the one being written is kept whole).
    fn discard_unsent(&mut self) {
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

    fn fail(&mut self, e: &FrameError) {
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
    fn start_close(&mut self, code: u16, reason: &str) {
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
    fn respond(&mut self, status: u16, ctype: &str, body: &[u8], extra: &[(&str, &str)]) {
        let mut out = Vec::with_capacity(160 + body.len());
        handshake::write_response(&mut out, status, ctype, body, extra, false);
        self.enqueue(out);
        self.close_after_queued();
    }

    /// Move to Closing behind what is queued, with the close deadline running.
    fn close_after_queued(&mut self) {
        self.phase = Phase::Closing { shut: false };
        self.hub
            .shard
            .set_deadline(self.key, Some(self.hub.shard.cfg.close_timeout()));
    }

    fn enqueue(&mut self, bytes: Vec<u8>) {
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

/// Token bucket of one socket for `max_messages_per_sec`: it holds one second's worth and
/// refills on the core's 100 ms ticks. Counted in tenths of a frame, so a tick refills exactly
/// `rate` tenths whatever the rate (no rounding away of 1.5 frames a tick at 15/s).
#[derive(Debug, Clone, Copy)]
struct RateBucket {
    /// Tenths of a frame left.
    left: u32,
    /// Tick of the last refill.
    tick: u32,
}

impl RateBucket {
    /// A full bucket for `rate` frames a second (`rate` is at most 1,000,000: see config).
    fn full(rate: u32) -> RateBucket {
        RateBucket {
            left: rate.saturating_mul(10),
            tick: 0,
        }
    }

    /// Add what the ticks since the last refill earned, up to one second's worth.
    fn refill(&mut self, rate: u32, now: u32) {
        let ticks = now.wrapping_sub(self.tick);
        if ticks > 0 {
            let full = u64::from(rate) * 10;
            let earned = u64::from(ticks) * u64::from(rate);
            self.left = (u64::from(self.left) + earned).min(full) as u32;
            self.tick = now;
        }
    }

    /// Spend one frame; false when the bucket is empty.
    fn take(&mut self) -> bool {
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
            b.refill(rate, t);
            n += (0..per_tick).filter(|_| b.take()).count() as u32;
        }
        n
    }

    #[test]
    fn rate_bucket_is_exact_at_any_rate() {
        // A burst of one second's worth, then `rate` a second.
        let mut b = RateBucket::full(200);
        b.refill(200, 0);
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
            b.refill(15, t);
            let n = if t % 2 == 0 { 2 } else { 1 };
            assert!((0..n).all(|_| b.take()), "tick {t}");
        }
    }

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
