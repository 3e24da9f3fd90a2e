//! The HTTP phase of a connection: requests answered in their order on a kept-alive connection
//! (decided from the head by [`crate::http::plan`], bodies read only once accepted), and the
//! WebSocket upgrade (Phoenix's connect checks first).

use tracing::{info, trace};

use crate::app::handler::ConnectInfo;
use crate::app::{auth, policy};
use crate::hooks::client::Hook;
use crate::http::{self, Answer, Api, BodyReservation, Plan, Refusal};
use crate::proto::frame::Decoder;
use crate::proto::handshake::{self, HttpError, Request};
use crate::pubsub::encode::Wire;
use crate::pubsub::pending::{self, Identity};
use crate::pubsub::session::Session;
use crate::runtime::shard::Stats;
use crate::runtime::wheel::TICK;
use crate::transport::state::{Conn, Connected, Endpoint, PendingBody, Phase, Step};

impl Conn {
    /// Serve the requests buffered in the HTTP phase, in their order (keep-alive, pipelining):
    /// until one is incomplete, the connection leaves the HTTP phase (upgrade, close), or the
    /// answers queued reach the out-queue bounds; then the rest waits in `buf` (`pipelined`)
    /// and is served before the socket is read again.
    pub(crate) fn on_http_bytes(&mut self) -> Step {
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
                Api::Disconnect => crate::http::api::disconnect(&self.hub, body),
                Api::LongPoll => {
                    let (req, format) = (pending.req.clone(), pending.format);
                    drop(pending); // its budget is given back: the body is copied on
                    return self.longpoll_post(&req, body, format, rest);
                }
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
                // A cluster node without NATS still serves its own clients: 200, "degraded".
                let body = match self.hub.cluster().and_then(|c| c.degraded()) {
                    None => format!(r#"{{"status":"ok","core":{id},"connections":{n}}}"#),
                    Some(why) => format!(
                        r#"{{"status":"degraded","reason":{},"core":{id},"connections":{n}}}"#,
                        serde_json::to_string(&why).unwrap_or_default()
                    ),
                };
                (Answer::json(200, &body), &[][..])
            }
            Plan::Metrics => (crate::http::metrics::metrics(&self.hub), &[][..]),
            Plan::Presence => (crate::http::api::presence(&self.hub, &req.query), &[][..]),
            Plan::History => (crate::http::api::history(&self.hub, &req.query), &[][..]),
            Plan::Phoenix => {
                if buf.len() > req.head_len && self.hub.shard.reads_held() {
                    // Frames sent right behind an upgrade would be handled before the socket's
                    // first read, so past the mesh's read gate: the request waits whole until
                    // the hold ends.
                    *deferred = true;
                    return false;
                }
                let mut rest = buf.split_off(req.head_len);
                if self.phoenix_upgrade(&req, &mut rest)
                    && let Phase::Http { buf, .. } = &mut self.phase
                {
                    // Waiting for the connect hook: the request stays whole in `buf`, the socket
                    // is not read meanwhile, and the answer routes it again (`on_hook_answer`).
                    buf.extend_from_slice(&rest);
                }
                return false;
            }
            Plan::Echo => {
                let mut rest = buf.split_off(req.head_len);
                self.upgrade(&req, Endpoint::Echo, None, None, &mut rest);
                return false;
            }
            Plan::Dashboard => (crate::http::dashboard::page(), &[][..]),
            Plan::LongPollGet => {
                let rest = buf.split_off(req.head_len);
                return match self.longpoll_get(&req, rest) {
                    Ok(more) => more,
                    Err(rest) => {
                        // Waiting for the connect hook, as an upgrade does (see Plan::Phoenix).
                        if let Phase::Http { buf, .. } = &mut self.phase {
                            buf.extend_from_slice(&rest);
                        }
                        false
                    }
                };
            }
            Plan::LongPollOptions => {
                let rest = buf.split_off(req.head_len);
                return self.longpoll_preflight(&req, rest);
            }
            Plan::DashboardLive => {
                let mut rest = buf.split_off(req.head_len);
                self.upgrade(&req, Endpoint::Dashboard, None, None, &mut rest);
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
    pub(crate) fn answer(
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
        self.after_answer(keep, rest)
    }

    /// After an answer is queued: kept alive (`keep`, and the core is not draining) the
    /// connection waits for its next request with `rest` as its buffer (true if `rest` holds
    /// some of it); otherwise it closes after the answer.
    pub(crate) fn after_answer(&mut self, keep: bool, rest: Vec<u8>) -> bool {
        let shard = self.hub.shard.clone();
        let wait = shard
            .cfg
            .http_keepalive()
            .filter(|_| keep && !shard.is_draining());
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
    pub(crate) fn on_http_deadline(&mut self) -> bool {
        let Phase::Http {
            buf,
            body,
            served,
            started,
            awaiting,
            ..
        } = &self.phase
        else {
            return false;
        };
        if awaiting.is_some() {
            self.on_longpoll_timeout();
            return false;
        }
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

    /// Phoenix's connect, for a WebSocket upgrade and a new long-poll session alike: transport
    /// version, token, the connect hook's and the handler's verdicts.
    pub(crate) fn connect_checks(&mut self, req: &Request) -> Connected {
        let verifier = self.hub.shared.verifier.as_deref();
        let admitted = match policy::admit(&self.hub.shard.cfg, verifier, req, auth::now_unix()) {
            Ok(a) => a,
            Err(refused) if !refused.detail.is_empty() => {
                // Why the token was refused, never the token.
                info!(
                    key = self.key,
                    reason = refused.detail,
                    "upgrade refused: invalid token"
                );
                return Connected::Refused(refused.status, refused.reason.into());
            }
            Err(refused) => {
                trace!(key = self.key, reason = refused.reason, "upgrade refused");
                return Connected::Refused(refused.status, refused.reason.into());
            }
        };
        let claims = admitted.claims;
        let hooks = self.hub.hooks().cloned();
        let mut who = (claims.is_some() || hooks.is_some()).then(|| {
            let mut w = identity(claims.as_ref());
            if hooks.is_some() {
                w.client = self.stream.peer_addr().ok();
            }
            Box::new(w)
        });
        if let Some(h) = hooks.filter(|h| h.wants(Hook::Connect, "")) {
            let (key, generation) = (self.key, self.generation);
            match h.take_answered(key, generation) {
                Some((_, outcome, _)) => {
                    let w = who.get_or_insert_with(Default::default);
                    if let Err((status, reason)) = pending::connect_decision(&outcome, w) {
                        info!(key, status, reason = %reason, "upgrade refused by the connect hook");
                        return Connected::Refused(status, reason.to_string());
                    }
                }
                None if h.is_pending(key, generation) => return Connected::Wait,
                None => {
                    let body = pending::connect_json(
                        h.node(),
                        who.as_deref(),
                        &req.query,
                        req.origin.as_deref(),
                    );
                    let asked = h.ask(
                        Hook::Connect,
                        key,
                        generation,
                        pending::Waiting::Connect,
                        body,
                    );
                    if asked.is_err() {
                        return Connected::Refused(503, "too many pending hooks".into());
                    }
                    return Connected::Wait;
                }
            }
        }
        let info = ConnectInfo {
            claims: claims.as_ref(),
            query: &req.query,
            origin: req.origin.as_deref(),
        };
        // A panic in the handler counts like one at any other call site (`Hub::guard`).
        if self.hub.guard(|h| h.connect(&info)) != Some(true) {
            return Connected::Refused(403, "connection refused".into());
        }
        let given = who.as_ref().and_then(|w| w.socket_id.clone());
        let id = given.or_else(|| {
            self.hub
                .guard(|h| h.socket_id(&info))
                .flatten()
                .map(Into::into)
        });
        if let Some(w) = &mut who {
            w.socket_id = id.clone();
        }
        Connected::Admitted {
            wire: Wire::of(admitted.vsn),
            protocol: admitted.protocol,
            who,
            id,
        }
    }

    /// Phoenix's connect ([`Conn::connect_checks`]), then the upgrade. True while it waits for
    /// the connect hook.
    fn phoenix_upgrade(&mut self, req: &Request, rest: &mut [u8]) -> bool {
        match self.connect_checks(req) {
            Connected::Wait => true,
            Connected::Refused(status, reason) => {
                let body = format!("{reason}\n");
                self.respond(status, "text/plain", body.as_bytes(), &[]);
                false
            }
            Connected::Admitted {
                wire,
                protocol,
                who,
                id,
            } => {
                self.upgrade(req, Endpoint::Phoenix(wire), protocol, who, rest);
                if let (Some(id), Phase::Open { .. }) = (id, &self.phase) {
                    self.hub.register_id(&id, self.key, self.generation);
                }
                false
            }
        }
    }

    /// Answer the opening handshake and switch to WebSocket.
    pub(crate) fn upgrade(
        &mut self,
        req: &Request,
        endpoint: Endpoint,
        protocol: Option<&str>,
        who: Option<Box<Identity>>,
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
        // Every endpoint: an echo or dashboard socket holds a slot and a descriptor like any other.
        self.hub
            .shard
            .set_deadline(self.key, Some(self.hub.shard.cfg.idle_timeout()));
        self.phase = Phase::Open {
            endpoint,
            decoder: Decoder::new(),
            session: Session::with_identity(who),
        };
        if endpoint == Endpoint::Dashboard {
            crate::http::dashboard::watch(&self.hub, self.key, self.generation);
        }
        if !rest.is_empty() {
            // Frames sent right behind the request, before our 101 was read.
            self.on_ws_bytes(rest);
        }
    }
}

/// What a verified token says about its socket.
fn identity(claims: Option<&auth::Claims>) -> Identity {
    let Some(c) = claims else {
        return Identity::default();
    };
    let object = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .filter(|v| v.is_object())
            .map(|v| v.to_string().into_boxed_str())
    };
    Identity {
        user: Some(c.sub.as_str().into()),
        channels: c.channels.clone().map(Vec::into_boxed_slice),
        presence: object(&c.presence),
        info: c.info.as_ref().map(|v| v.to_string().into_boxed_str()),
        ..Identity::default()
    }
}
