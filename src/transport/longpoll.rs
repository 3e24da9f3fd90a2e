//! Phoenix's long-poll transport (`/socket/longpoll`): the session task, and what an HTTP
//! connection does with a long-poll request.
//!
//! A session is a slot without a socket on the core that opened it, served by a task of its own
//! ([`LongPoll`]): its outbound queue holds its replies and broadcasts (the same WebSocket frames
//! a socket would get, encoded once per wire format per core) until a poll takes them. A request
//! whose session is on another core goes there over the mesh and its answer comes back the same
//! way (`pubsub::longpoll`); the connection waits (`ready::AWAITING`) without reading, with a
//! deadline of a window and five seconds (a request or answer dropped by the mesh at its hard
//! bound is answered 500 then, and the connection closed).

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::trace;

use crate::http::{self, Answer, Format};
use crate::proto::frame::{OpCode, unframe};
use crate::proto::handshake::{self, Request};
use crate::proto::phoenix::Frame;
use crate::proto::phoenix::longpoll::{self as lp, Line, SessionToken};
use crate::pubsub::encode::Wire;
use crate::pubsub::hub::Hub;
use crate::pubsub::longpoll::{self, Ask, Responder, Target, http_answer};
use crate::pubsub::session::{Ctx, Session};
use crate::runtime::reactor::ready;
use crate::runtime::shard::{Stats, signal};
use crate::runtime::wheel::TICK;
use crate::transport::state::{Conn, Connected, Phase, RateBucket};

/// How much longer than a window a connection waits for its session's answer.
const ANSWER_GRACE: Duration = Duration::from_secs(5);

/// Headers of an answer the connection gives itself (a new session, a refusal, the preflight).
const LP_HEADERS: &[(&str, &str)] = &[
    ("Access-Control-Allow-Origin", "*"),
    ("Cache-Control", "no-store"),
];
const PREFLIGHT: &[(&str, &str)] = &[
    ("Access-Control-Allow-Origin", "*"),
    (
        "Access-Control-Allow-Headers",
        "content-type, x-phoenix-authtoken, authorization, x-requested-with",
    ),
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Max-Age", "3600"),
];

fn json_answer(body: Vec<u8>) -> Answer {
    Answer {
        status: 200,
        content_type: "application/json",
        body,
        headers: LP_HEADERS,
    }
}

/// The session token of a request, if it brought one (the last `token` parameter that looks like
/// one: the socket's own `token` parameter, if any, comes first).
fn session_token(req: &Request) -> Option<String> {
    handshake::query_param_last(&req.query, "token").filter(|t| t.starts_with(lp::TOKEN_PREFIX))
}

impl Conn {
    /// `OPTIONS /socket/longpoll`: the CORS preflight.
    pub(crate) fn longpoll_preflight(&mut self, req: &Request, rest: Vec<u8>) -> bool {
        let a = Answer {
            status: 200,
            content_type: "text/plain",
            body: Vec::new(),
            headers: PREFLIGHT,
        };
        let keep = http::keep_alive(req, &self.hub.shard.cfg, false);
        self.answer(false, &a, &[], keep, rest)
    }

    /// `GET /socket/longpoll`: without a session token, open a session on this core (410 with
    /// its token); with one, poll it where it is. `Err(rest)`: the connect hook was asked, the
    /// request waits whole for its answer (the caller puts `rest` back behind its head).
    pub(crate) fn longpoll_get(&mut self, req: &Request, rest: Vec<u8>) -> Result<bool, Vec<u8>> {
        let keep = http::keep_alive(req, &self.hub.shard.cfg, false);
        let Some(token) = session_token(req) else {
            let Some(body) = self.longpoll_open(req) else {
                return Err(rest);
            };
            return Ok(self.answer(false, &json_answer(body), &[], keep, rest));
        };
        Ok(self.longpoll_forward(&token, Ask::Poll, keep, rest))
    }

    /// `POST /socket/longpoll` with its body read: to the session, wherever it is.
    pub(crate) fn longpoll_post(
        &mut self,
        req: &Request,
        body: &[u8],
        format: Format,
        rest: Vec<u8>,
    ) -> bool {
        let keep = http::keep_alive(req, &self.hub.shard.cfg, true);
        let Some(token) = session_token(req) else {
            let body = lp::status_body(410);
            return self.answer(false, &json_answer(body), &[], keep, rest);
        };
        let ask = Ask::Post {
            body: body.to_vec(),
            ndjson: format == Format::NdJson,
        };
        self.longpoll_forward(&token, ask, keep, rest)
    }

    /// Send a request to the session its token names and wait for the answer; a token that
    /// names no core of this process is answered 410 at once (the session is gone: phoenix.js
    /// opens a new one and rejoins).
    fn longpoll_forward(&mut self, token: &str, ask: Ask, keep: bool, rest: Vec<u8>) -> bool {
        let hub = self.hub.clone();
        let cores = hub.shard.cores().max(1);
        let Some(t) = SessionToken::parse(token).filter(|t| usize::from(t.core) < cores) else {
            let body = lp::status_body(410);
            return self.answer(false, &json_answer(body), &[], keep, rest);
        };
        let Phase::Http { buf, awaiting, .. } = &mut self.phase else {
            return false;
        };
        *buf = rest;
        *awaiting = Some(keep);
        if let Some(slot) = hub.shard.slots.borrow_mut().get_mut(self.key) {
            slot.io |= ready::AWAITING;
        }
        let wait = hub.shard.cfg.longpoll_window() + ANSWER_GRACE;
        hub.shard.set_deadline(self.key, Some(wait));
        let from = Responder {
            core: hub.mesh_index(),
            key: self.key as u32,
            generation: self.generation,
            keep,
        };
        let to = Target {
            key: t.key,
            generation: t.generation,
            secret: t.secret,
        };
        hub.longpoll_send(t.core, to, longpoll::Request { from, ask });
        false
    }

    /// The answer this connection waited for is queued (`signal::ANSWER`): on to the next
    /// request (keep-alive) or close after it.
    pub(crate) fn on_longpoll_answered(&mut self) {
        let Phase::Http { awaiting, .. } = &mut self.phase else {
            return;
        };
        let Some(keep) = awaiting.take() else {
            return;
        };
        let rest = match &mut self.phase {
            Phase::Http { buf, .. } => std::mem::take(buf),
            _ => Vec::new(),
        };
        if self.after_answer(keep, rest)
            && let Phase::Http { pipelined, .. } = &mut self.phase
        {
            *pipelined = true; // the next request is here already: serve it
        }
    }

    /// The answer did not come within a window and the grace (the mesh dropped the request or
    /// its answer): 500, and close.
    pub(crate) fn on_longpoll_timeout(&mut self) {
        if let Some(slot) = self.hub.shard.slots.borrow_mut().get_mut(self.key) {
            slot.io &= !ready::AWAITING;
        }
        trace!(key = self.key, "long-poll answer timed out");
        let mut out = Vec::new();
        let body = lp::status_body(500);
        handshake::write_response(&mut out, 200, "application/json", &body, LP_HEADERS, false);
        self.enqueue(out);
        self.close_after_queued();
    }

    /// Open a session on this core for a request without a session token, after the connect
    /// checks of a WebSocket upgrade (`Conn::connect_checks`: vsn, origin, token, the connect
    /// hook, the handler); the answer's body: 410 with the token, 403 (refused), 500 (this core
    /// holds its share of `max_longpoll_sessions`, or the hooks are busy). `None`: waiting for
    /// the connect hook.
    fn longpoll_open(&mut self, req: &Request) -> Option<Vec<u8>> {
        let hub = self.hub.clone();
        let cap = hub
            .shard
            .cfg
            .max_longpoll_sessions
            .div_ceil(hub.shard.cores().max(1));
        if hub.longpoll.borrow().len() >= cap {
            Stats::bump(&hub.counters.longpoll_refused);
            return Some(lp::status_body(500));
        }
        let (wire, who, id) = match self.connect_checks(req) {
            Connected::Wait => return None,
            Connected::Refused(status, reason) => {
                trace!(key = self.key, status, reason, "long-poll session refused");
                // phoenix.js knows 403 (closes for good) and 500 (retries).
                let status = if status == 403 || status == 401 {
                    403
                } else {
                    500
                };
                return Some(lp::status_body(status));
            }
            Connected::Admitted { wire, who, id, .. } => (wire, who, id),
        };
        let (key, generation) = hub.shard.open_slot();
        let secret = crate::runtime::sys::random_bytes::<16>();
        hub.longpoll
            .borrow_mut()
            .open(key as u32, generation, secret);
        let token = SessionToken {
            core: hub.mesh_index(),
            key: key as u32,
            generation,
            secret,
        }
        .encode();
        if let Some(id) = id {
            hub.register_id(&id, key, generation);
        }
        Stats::bump(&hub.counters.longpoll_opened);
        Stats::add(&hub.counters.longpoll_sessions, 1);
        let session = LongPoll::new(
            hub.clone(),
            key,
            generation,
            wire,
            Session::with_identity(who),
        );
        glommio::spawn_local(session).detach();
        Some(lp::poll_body(410, &token, std::iter::empty()))
    }
}

/// One long-poll session: its task state (`long_poll_session_is_small`).
pub(crate) struct LongPoll {
    hub: Rc<Hub>,
    key: usize,
    generation: u32,
    wire: Wire,
    rate: RateBucket,
    /// The poll waiting for messages, if any, and the tick its window ends.
    poll: Option<Responder>,
    poll_until: u32,
    /// The tick at which the session ends unless polled before (1.5 windows after a poll).
    expire_at: u32,
    session: Session,
}

impl LongPoll {
    fn new(hub: Rc<Hub>, key: usize, generation: u32, wire: Wire, session: Session) -> Self {
        let shard = &hub.shard;
        let expiry = shard.cfg.longpoll_window() * 3 / 2;
        shard.set_deadline(key, Some(expiry));
        let expire_at = shard.deadline_tick(expiry) as u32;
        let rate = RateBucket::full(shard.cfg.max_messages_per_sec);
        LongPoll {
            hub,
            key,
            generation,
            wire,
            rate,
            poll: None,
            poll_until: 0,
            expire_at,
            session,
        }
    }

    /// Answer a request with this JSON body.
    fn reply(&self, to: Responder, body: &[u8]) {
        let keep = self.hub.shard.cfg.http_keepalive().filter(|_| to.keep);
        self.hub.longpoll_answer(to, http_answer(body, keep));
    }

    fn token(&self) -> String {
        // The secret is kept in the registry only; the token is rebuilt from it when needed.
        self.hub
            .longpoll
            .borrow()
            .token_of(self.key as u32, self.generation)
            .map(|secret| {
                SessionToken {
                    core: self.hub.mesh_index(),
                    key: self.key as u32,
                    generation: self.generation,
                    secret,
                }
                .encode()
            })
            .unwrap_or_default()
    }

    /// Take a poll: an earlier one still waiting is answered 204 (phoenix.js has one at a time).
    fn on_poll(&mut self, from: Responder) {
        if let Some(old) = self.poll.take() {
            self.reply(old, &lp::poll_body(204, &self.token(), std::iter::empty()));
        }
        let shard = &self.hub.shard;
        let window = shard.cfg.longpoll_window();
        self.poll = Some(from);
        self.poll_until = shard.deadline_tick(window) as u32;
        self.expire_at = shard.deadline_tick(window * 3 / 2) as u32;
        shard.set_deadline(self.key, Some(window));
    }

    /// Handle a POST's messages in their order; false: the session must end (a message a
    /// socket would be closed for, or the rate limit).
    fn on_post(&mut self, from: Responder, body: &[u8], ndjson: bool) -> bool {
        let lines = match lp::batch(body, ndjson) {
            Ok(lines) => lines,
            Err(e) => {
                let reason = serde_json::to_string(&e.to_string()).unwrap_or_default();
                let body = format!("{{\"status\":400,\"reason\":{reason}}}");
                self.reply(from, body.as_bytes());
                return true;
            }
        };
        let shard = self.hub.shard.clone();
        let rate = shard.cfg.max_messages_per_sec;
        if rate > 0 {
            self.rate.refill(rate, shard.now_tick() as u32, false);
        }
        Stats::add(&shard.stats.frames_in, lines.len() as u64);
        for line in &lines {
            let refused = if rate > 0 && !self.rate.take() {
                Some("rate limit")
            } else {
                let frame = match line {
                    Line::Text(t) => Frame::Text(t),
                    Line::Binary(b) => Frame::Binary(b),
                };
                let ctx = Ctx {
                    hub: &self.hub,
                    key: self.key,
                    generation: self.generation,
                    wire: self.wire,
                };
                self.session.on_frame(ctx, frame).err().map(|(_, why)| why)
            };
            if let Some(why) = refused {
                trace!(
                    key = self.key,
                    why, "long-poll session closed by its message"
                );
                let reason = serde_json::to_string(why).unwrap_or_default();
                let body = format!("{{\"status\":400,\"reason\":{reason}}}");
                self.reply(from, body.as_bytes());
                return false;
            }
        }
        self.reply(from, &lp::status_body(200));
        true
    }

    /// The poll waiting gets what is queued, if anything: the text frames' messages (a binary
    /// broadcast has no long-poll form: phoenix.js decodes each message as JSON text).
    fn flush(&mut self) {
        let Some(to) = self.poll else {
            return;
        };
        let frames = {
            let mut slots = self.hub.shard.slots.borrow_mut();
            let Some(slot) = slots.get_mut(self.key) else {
                return;
            };
            if slot.outq.is_empty() {
                return;
            }
            slot.out_bytes = 0;
            std::mem::take(&mut slot.outq)
        };
        self.poll = None;
        let texts = frames.iter().filter_map(|f| match unframe(f) {
            Some((OpCode::Text, payload)) => std::str::from_utf8(payload).ok(),
            _ => None,
        });
        let body = lp::poll_body(200, &self.token(), texts);
        Stats::add(&self.hub.shard.stats.frames_out, frames.len() as u64);
        self.reply(to, &body);
        // Until the next poll, the session lives to its expiry.
        let now = self.hub.shard.now_tick() as u32;
        let left = self.expire_at.saturating_sub(now).max(1);
        self.hub.shard.set_deadline(self.key, Some(TICK * left));
    }

    fn step(&mut self) -> Poll<()> {
        loop {
            let shard = self.hub.shard.clone();
            let signals = shard.take_signals(self.key);
            if signals & (signal::DRAIN | signal::KICK | signal::OVERFLOW) != 0 {
                if signals & signal::OVERFLOW != 0 {
                    Stats::bump(&shard.stats.slow_consumer_closes);
                }
                return Poll::Ready(());
            }
            if signals & signal::HOOK != 0 {
                // A join or push of this session waited for its backend hook: carry out the
                // answer, then what queued behind it.
                let ctx = Ctx {
                    hub: &self.hub,
                    key: self.key,
                    generation: self.generation,
                    wire: self.wire,
                };
                if self.session.resume(ctx).is_err() {
                    return Poll::Ready(());
                }
            }
            let now = shard.now_tick() as u32;
            if let Some(p) = self.poll
                && now >= self.poll_until
            {
                self.poll = None;
                self.reply(p, &lp::poll_body(204, &self.token(), std::iter::empty()));
                let left = self.expire_at.saturating_sub(now).max(1);
                shard.set_deadline(self.key, Some(TICK * left));
            }
            if self.poll.is_none() && now >= self.expire_at {
                Stats::bump(&self.hub.counters.longpoll_expired);
                return Poll::Ready(());
            }
            let (key, generation) = (self.key as u32, self.generation);
            let hook_wait = self
                .hub
                .hooks()
                .is_some_and(|h| h.is_pending(self.key, generation));
            if hook_wait && self.hub.longpoll.borrow().next_is_post(key, generation) {
                // A message waits for its hook: the next POST waits behind it (its answer,
                // `signal::HOOK`, wakes the task), as a socket is not read meanwhile.
                self.flush();
                return Poll::Pending;
            }
            if shard.reads_held() && self.hub.longpoll.borrow().next_is_post(key, generation) {
                // The core's mesh holds its publishers back: a POST's messages could be
                // broadcasts, so they wait (as a socket's wait in the kernel) until the hold
                // ends and wakes the parked list; polls behind it wait with them (in order).
                shard.park(self.key);
                self.flush();
                return Poll::Pending;
            }
            let next = self.hub.longpoll.borrow_mut().take(key, generation);
            match next {
                Some(longpoll::Request {
                    from,
                    ask: Ask::Poll,
                }) => self.on_poll(from),
                Some(longpoll::Request {
                    from,
                    ask: Ask::Post { body, ndjson },
                }) => {
                    if !self.on_post(from, &body, ndjson) {
                        return Poll::Ready(());
                    }
                }
                None => {
                    self.flush();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Future for LongPoll {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let out = this.step();
        if out.is_pending()
            && let Some(slot) = this.hub.shard.slots.borrow_mut().get_mut(this.key)
        {
            match &slot.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => slot.waker = Some(cx.waker().clone()),
            }
        }
        out
    }
}

impl Drop for LongPoll {
    /// The session ends (expired, kicked, slow, drained, refused a message, or its core stops):
    /// its channels are left, and whatever waits for it is answered 410 (phoenix.js opens a new
    /// session and rejoins).
    fn drop(&mut self) {
        let gone = lp::status_body(410);
        if let Some(p) = self.poll.take() {
            self.reply(p, &gone);
        }
        let waiting = self
            .hub
            .longpoll
            .borrow_mut()
            .close(self.key as u32, self.generation);
        for r in waiting {
            self.reply(r.from, &gone);
        }
        let ctx = Ctx {
            hub: &self.hub,
            key: self.key,
            generation: self.generation,
            wire: self.wire,
        };
        self.session.leave_all(ctx);
        if let Some(h) = self.hub.hooks() {
            h.forget(self.key, self.generation);
        }
        self.hub.shard.close_slot(self.key);
        Stats::sub(&self.hub.counters.longpoll_sessions, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_poll_session_is_small() {
        // hub 8 + key 8 + generation 4 + wire 1 + rate 8 + poll 16 + poll_until 4 + expire_at 4
        // + session 40, padded; besides it the slot (64), the registry entry, and glommio's task.
        let n = std::mem::size_of::<LongPoll>();
        println!("LongPoll {n} B");
        assert!(n <= 104, "LongPoll is {n} bytes");
    }
}
