//! Plain HTTP on the WebSocket port: what to do with a request, decided from its head alone.
//!
//! [`plan`] takes a parsed request head, the configuration and (only when the answer depends on
//! it) the peer's address, and says what the connection does next: answer now, upgrade, or read
//! a body of a known length first. Every refusal — malformed framing (400), authentication
//! (401/403), route (404), method (405), framing (411), size (413), content type (415) — is made
//! here, before a single body byte is buffered; only a request that passed all of them gets its
//! body read, and only if its core's body budget has room ([`BodyReservation`], else 503).
//!
//! Access (issue 10, point 2):
//! - `/health` is open (load balancers).
//! - `/metrics`: with `metrics_key`, `Authorization: Bearer <metrics_key>` from any address;
//!   without it, loopback peers only.
//! - `/api/*`: a request with an `Origin` header is refused unless the origin is in
//!   `api_origins` (no web page can publish by default); then, with `api_key`, the bearer key
//!   from any address; without it, loopback peers only. Bodies must be `application/json`.
//! - Loopback's trust without a key holds only under a `Host` that names this machine (an IP
//!   address, `localhost`, `*.localhost`, a one-label name): under a dotted DNS name the request
//!   may be a DNS-rebinding page or a reverse proxy's client (403).
//! - `/dashboard`, `/dashboard/live` (only with `dashboard`; 404 otherwise): the API's rule,
//!   and with `api_key` the key may come as `?key=<api_key>` too (a browser sets no header on
//!   a page load or a WebSocket); the WebSocket also refuses a page of another origin (a
//!   browser sends `Origin`): any page could otherwise open it from the operator's loopback.

pub mod api;
pub mod dashboard;
pub mod metrics;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::proto::handshake::{self, Request};
use crate::runtime::shard::Stats;

/// An HTTP answer for the connection to send.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Headers of this answer besides the standard ones (e.g. `Retry-After`).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: format!("{body}\n").into_bytes(),
            headers: &[],
        }
    }
}

/// What the connection does with a request whose head is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Answer with this and close; the body, if any, is never read.
    Refuse(Refusal),
    /// `GET /health`.
    Health,
    /// `GET /metrics` (the caller is allowed).
    Metrics,
    /// `/socket/websocket`: Phoenix's connect checks, then the upgrade.
    Phoenix,
    /// `/echo` (only with `echo`): the upgrade.
    Echo,
    /// `GET /api/presence?topic=...` (the caller is allowed).
    Presence,
    /// `GET /api/history?topic=...&since=N&limit=M` (the caller is allowed).
    History,
    /// `GET /dashboard` (the caller is allowed): the page.
    Dashboard,
    /// `GET /dashboard/live` (the caller is allowed): the upgrade to the dashboard's socket.
    DashboardLive,
    /// `GET /socket/longpoll` (only with `longpoll`): open a session or poll one.
    LongPollGet,
    /// `OPTIONS /socket/longpoll`: the CORS preflight.
    LongPollOptions,
    /// An API call: reserve `len` bytes of the core's body budget, read the body, then answer.
    Body {
        api: Api,
        format: Format,
        len: usize,
    },
}

/// How an accepted body is encoded (from its `Content-Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`: one JSON value (for a batch, an array).
    Json,
    /// `application/x-ndjson`: one JSON value per line, blank lines ignored.
    NdJson,
}

/// The API endpoints that take a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /api/broadcast`.
    Broadcast,
    /// `POST /api/disconnect`.
    Disconnect,
    /// `POST /socket/longpoll`: a message, or a batch of them (`Format::NdJson`), for a session.
    LongPoll,
}

/// A refusal: status, a short reason for the body, and the headers the status calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
    /// Answer with `{"error": reason, "status": status}` (the API, long-poll: phoenix.js reads
    /// the status from the body) instead of plain text.
    pub json: bool,
    pub headers: &'static [(&'static str, &'static str)],
}

impl Refusal {
    const fn new(status: u16, reason: &'static str, json: bool) -> Refusal {
        Refusal {
            status,
            reason,
            json,
            headers: &[],
        }
    }

    const fn with(self, headers: &'static [(&'static str, &'static str)]) -> Refusal {
        Refusal { headers, ..self }
    }

    /// The request's body would pass the core's `max_body_bytes_in_flight`.
    pub const BUSY: Refusal =
        Refusal::new(503, "server busy: too many request bodies in flight", true)
            .with(&[("Retry-After", "1")]);

    /// The answer to send.
    pub fn answer(&self) -> Answer {
        let (content_type, body) = self.body();
        Answer {
            status: self.status,
            content_type,
            body,
            headers: &[], // the connection sends `self.headers` with it
        }
    }

    /// `Content-Type` and body of the answer.
    pub fn body(&self) -> (&'static str, Vec<u8>) {
        if self.json {
            let reason = serde_json::to_string(self.reason).unwrap_or_default();
            (
                "application/json",
                format!("{{\"error\":{reason},\"status\":{}}}\n", self.status).into_bytes(),
            )
        } else {
            ("text/plain", format!("{}\n", self.reason).into_bytes())
        }
    }
}

const BEARER: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer")];

/// Decide what to do with `req` from its head. `peer` gives the peer's address; it is called
/// only when the answer depends on it (`/metrics` without `metrics_key`, `/api/*` without
/// `api_key`), and `None` (unknown) counts as not loopback.
pub fn plan(req: &Request, cfg: &Config, peer: impl FnOnce() -> Option<IpAddr>) -> Plan {
    let path = req.path.as_str();
    let api = path == "/api" || path.starts_with("/api/");
    let get = req.method == "GET" || req.method == "HEAD";
    let has_body = req.has_body();
    // Answers of the HTTP endpoints are JSON, errors included.
    let json = api || path == "/metrics" || path == "/health" || path == "/socket/longpoll";
    if has_body && (get || req.upgrade_websocket) {
        let why = "a GET, HEAD or upgrade request must not have a body";
        return Plan::Refuse(Refusal::new(400, why, json));
    }
    match path {
        "/health" if get => Plan::Health,
        "/metrics" => match access(&cfg.metrics_key, req, peer, true) {
            Err(refusal) => Plan::Refuse(refusal),
            Ok(()) if get => Plan::Metrics,
            Ok(()) => Plan::Refuse(method_not_allowed(true)),
        },
        "/health" => Plan::Refuse(method_not_allowed(true)),
        _ if api => plan_api(req, cfg, peer),
        "/socket/websocket" => Plan::Phoenix,
        "/socket/longpoll" if cfg.longpoll => plan_longpoll(req, cfg),
        "/echo" if cfg.echo => Plan::Echo,
        "/dashboard" | "/dashboard/live" if cfg.dashboard => plan_dashboard(req, cfg, peer),
        _ => Plan::Refuse(Refusal::new(404, "not found", false)),
    }
}

/// `/api/*`: origin, caller, route, method, framing, content type, length; in that order, so a
/// caller who may not use the API learns nothing about it.
fn plan_api(req: &Request, cfg: &Config, peer: impl FnOnce() -> Option<IpAddr>) -> Plan {
    let refuse = |status, why| Plan::Refuse(Refusal::new(status, why, true));
    if req
        .origin
        .as_deref()
        .is_some_and(|o| !cfg.api_origin_allowed(o))
    {
        return refuse(403, "origin not allowed (see api_origins)");
    }
    if let Err(refusal) = access(&cfg.api_key, req, peer, true) {
        return Plan::Refuse(refusal);
    }
    let api = match req.path.as_str() {
        "/api/broadcast" => Api::Broadcast,
        "/api/disconnect" => Api::Disconnect,
        "/api/presence" if req.method == "GET" || req.method == "HEAD" => return Plan::Presence,
        "/api/history" if req.method == "GET" || req.method == "HEAD" => return Plan::History,
        "/api/presence" | "/api/history" => {
            return Plan::Refuse(Refusal::new(405, "use GET", true).with(&[("Allow", "GET")]));
        }
        _ => return refuse(404, "no such API endpoint"),
    };
    if req.method != "POST" {
        return Plan::Refuse(Refusal::new(405, "use POST", true).with(&[("Allow", "POST")]));
    }
    if req.chunked {
        return refuse(411, "chunked bodies are not supported: send Content-Length");
    }
    let is = |essence| {
        req.content_type
            .as_deref()
            .is_some_and(|ct| handshake::media_type_is(ct, essence))
    };
    let format = if is("application/json") {
        Format::Json
    } else if is("application/x-ndjson") {
        Format::NdJson
    } else {
        return refuse(
            415,
            "Content-Type must be application/json or application/x-ndjson",
        );
    };
    let Some(len) = req.content_length else {
        return refuse(411, "Content-Length required");
    };
    if len > cfg.max_request_body {
        return refuse(413, "request body too large (max_request_body)");
    }
    Plan::Body { api, format, len }
}

/// `/socket/longpoll`: a page of an origin `check_origin` refuses gets 403 (as for the
/// WebSocket); then GET (poll), OPTIONS (preflight), or POST with a `Content-Length` body of at
/// most `max_request_body` (any content type: phoenix.js sends `application/x-ndjson` batches,
/// older clients one JSON message).
fn plan_longpoll(req: &Request, cfg: &Config) -> Plan {
    let refuse = |status, why| Plan::Refuse(Refusal::new(status, why, true));
    if !cfg.origin_allowed(req.origin.as_deref()) {
        return refuse(403, "origin not allowed");
    }
    match req.method.as_str() {
        "GET" | "HEAD" => return Plan::LongPollGet,
        "OPTIONS" => return Plan::LongPollOptions,
        "POST" => {}
        _ => {
            return Plan::Refuse(
                Refusal::new(405, "use GET, POST or OPTIONS", true)
                    .with(&[("Allow", "GET, POST, OPTIONS")]),
            );
        }
    }
    if req.chunked {
        return refuse(411, "chunked bodies are not supported: send Content-Length");
    }
    let Some(len) = req.content_length else {
        return refuse(411, "Content-Length required");
    };
    if len > cfg.max_request_body {
        return refuse(413, "request body too large (max_request_body)");
    }
    let ndjson = req
        .content_type
        .as_deref()
        .is_some_and(|ct| handshake::media_type_is(ct, "application/x-ndjson"));
    let format = if ndjson { Format::NdJson } else { Format::Json };
    Plan::Body {
        api: Api::LongPoll,
        format,
        len,
    }
}

/// `/dashboard` and `/dashboard/live`: for the socket, a browser page of another origin is
/// refused (403); then the caller (the API's rule, the key also as `?key=`), then the method.
fn plan_dashboard(req: &Request, cfg: &Config, peer: impl FnOnce() -> Option<IpAddr>) -> Plan {
    let live = req.path == "/dashboard/live";
    if live
        && let Some(origin) = req.origin.as_deref()
        && !same_origin(origin, req.host.as_deref())
        && !cfg.api_origin_allowed(origin)
    {
        return Plan::Refuse(Refusal::new(
            403,
            "origin not allowed: the dashboard's own page, or api_origins",
            false,
        ));
    }
    let key = handshake::query_param(&req.query, "key");
    let by_query = matches!((&cfg.api_key, &key), (Some(k), Some(given))
        if constant_time_eq(given.as_bytes(), k.as_bytes()));
    if !by_query && let Err(refusal) = access(&cfg.api_key, req, peer, false) {
        return Plan::Refuse(refusal);
    }
    match (req.method == "GET" || req.method == "HEAD", live) {
        (true, false) => Plan::Dashboard,
        (true, true) => Plan::DashboardLive,
        (false, _) => Plan::Refuse(method_not_allowed(false)),
    }
}

/// Whether `origin` is the origin of the page the request's `Host` serves (`http://` or
/// `https://` and the host, port included, compared case-insensitively).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    rest.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// Whether the connection goes on to read another request after the answer to `req`: keep-alive
/// is on (`http_keepalive_ms`), the client wants it ([`Request::wants_keep_alive`]), and the
/// stream is at the start of the next request: the body was read (`body_read`) or there is none.
/// A refusal from the head of a request with a body leaves the body unread: that closes. So
/// does a refused WebSocket handshake (`Upgrade: websocket`): its client will not reuse it.
pub fn keep_alive(req: &Request, cfg: &Config, body_read: bool) -> bool {
    cfg.http_keepalive_ms > 0
        && req.wants_keep_alive()
        && !req.upgrade_websocket
        && (body_read || !req.has_body())
}

/// Append the answer `a` to a plain HTTP request: for `HEAD` (`head_only`) the head alone, with
/// the `Content-Length` of the body it leaves out (RFC 9110 9.3.2). Kept alive (`keep_alive`:
/// the wait for the next request) it says `Connection: keep-alive` and, from one second up,
/// `Keep-Alive: timeout=<seconds>` (a hint for clients that drop idle connections themselves).
pub fn write_answer(
    out: &mut Vec<u8>,
    head_only: bool,
    a: &Answer,
    extra: &[(&str, &str)],
    keep_alive: Option<Duration>,
) {
    let hint = handshake::keep_alive_hint(keep_alive);
    let mut headers = extra.to_vec();
    headers.extend_from_slice(a.headers);
    if let Some(hint) = hint.as_deref() {
        headers.push(("Keep-Alive", hint));
    }
    let keep = keep_alive.is_some();
    let (status, ct) = (a.status, a.content_type);
    if head_only {
        handshake::write_response_head(out, status, ct, a.body.len(), &headers, keep);
    } else {
        handshake::write_response(out, status, ct, &a.body, &headers, keep);
    }
}

/// A request under way on a kept-alive connection has `handshake_timeout_ms` from its first
/// byte; `age` has passed. When its deadline passes before that: how long to wait before looking
/// again (at most the keep-alive wait, so that the deadline the next answer sets is never
/// earlier than the timer-wheel entry, which only moves later), or `None`: its time is up.
pub fn recheck_after(age: Duration, cfg: &Config) -> Option<Duration> {
    let left = cfg.handshake_timeout().checked_sub(age)?;
    let step = cfg.http_keepalive().map_or(left, |wait| left.min(wait));
    (!step.is_zero()).then_some(step)
}

/// With a key: the request must carry it as a bearer token, from any address (401). Without
/// one: only loopback peers (403).
fn access(
    key: &Option<String>,
    req: &Request,
    peer: impl FnOnce() -> Option<IpAddr>,
    json: bool,
) -> Result<(), Refusal> {
    match key {
        Some(key) => {
            let given = req
                .authorization
                .as_deref()
                .and_then(handshake::bearer_credentials)
                .unwrap_or("");
            if constant_time_eq(given.as_bytes(), key.as_bytes()) {
                Ok(())
            } else {
                Err(Refusal::new(401, "missing or wrong bearer key", json).with(BEARER))
            }
        }
        None if !host_is_an_address(req.host.as_deref()) => Err(Refusal::new(
            403,
            "no key is configured: loopback peers only, under an IP address, localhost or a one-label name",
            json,
        )),
        None if peer().is_some_and(is_loopback) => Ok(()),
        None => Err(Refusal::new(
            403,
            "loopback peers only: no key is configured",
            json,
        )),
    }
}

/// Whether a request's `Host` names this machine rather than a site: an IP literal (with or
/// without a port), `localhost` or a `*.localhost` name (browsers resolve those themselves), a
/// name of one label (the machine's own name from `/etc/hosts`), or no `Host` at all (HTTP/1.0
/// clients; a browser always sends one). Loopback's trust without a key needs this: under a
/// dotted DNS name a loopback request may be a page of another site whose name now resolves to
/// 127.0.0.1 (DNS rebinding: the browser sends no `Origin` on a same-origin GET), or a reverse
/// proxy on this host passing on its client's `Host`.
fn host_is_an_address(host: Option<&str>) -> bool {
    let Some(host) = host.map(str::trim) else {
        return true;
    };
    let is_port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        return rest.split_once(']').is_some_and(|(ip, port)| {
            ip.parse::<std::net::Ipv6Addr>().is_ok()
                && (port.is_empty() || port.strip_prefix(':').is_some_and(is_port))
        });
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || (!name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

fn method_not_allowed(json: bool) -> Refusal {
    Refusal::new(405, "method not allowed", json).with(&[("Allow", "GET, HEAD")])
}

/// A loopback peer: 127.0.0.0/8, `::1`, or either as an IPv4-mapped IPv6 address (a server
/// listening on `[::]` sees IPv4 clients as `::ffff:a.b.c.d`).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Compare without an early exit, so the time taken does not tell how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Request-body bytes held against one core's `max_body_bytes_in_flight` budget, from the moment
/// a request head is accepted until the value is dropped: when the request is answered, or
/// with the connection (every exit path: the reservation lives in the connection's HTTP phase).
///
/// The budget is the core's `http_body_bytes` gauge. Only the owning core writes its `Stats`
/// and a connection never leaves its core, so the check-then-add cannot race.
pub struct BodyReservation {
    stats: Arc<Stats>,
    bytes: usize,
}

impl BodyReservation {
    /// Reserve `bytes`, or `None` (counted in `http_body_busy`) if that would pass `limit`.
    pub fn take(stats: &Arc<Stats>, limit: usize, bytes: usize) -> Option<BodyReservation> {
        let used = stats
            .http_body_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if used.saturating_add(bytes as u64) > limit as u64 {
            Stats::bump(&stats.http_body_busy);
            return None;
        }
        Stats::add(&stats.http_body_bytes, bytes as u64);
        Some(BodyReservation {
            stats: stats.clone(),
            bytes,
        })
    }

    /// The bytes reserved: the body's length.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BodyReservation {
    fn drop(&mut self) {
        Stats::sub(&self.stats.http_body_bytes, self.bytes as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const LOCAL: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    const REMOTE: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)));

    fn req(raw: &str) -> Request {
        handshake::parse_request(raw.as_bytes(), 8192)
            .unwrap()
            .unwrap()
    }

    fn status(plan: Plan) -> u16 {
        match plan {
            Plan::Refuse(r) => r.status,
            Plan::Body { .. } => 0,
            _ => 200,
        }
    }

    const POST: &str = "POST /api/broadcast HTTP/1.1\r\nContent-Type: application/json\r\n\
        Content-Length: 2\r\n\r\n";

    #[test]
    fn loopback_addresses() {
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "127.255.255.254",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "192.0.2.2",
            "10.0.0.1",
            "0.0.0.0",
            "::",
            "::ffff:192.0.2.2",
            "fd00::2",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
        assert!(!is_loopback(IpAddr::V6(Ipv6Addr::UNSPECIFIED)));
    }

    #[test]
    fn api_without_key_answers_loopback_only() {
        let cfg = Config::default();
        let want = Plan::Body {
            api: Api::Broadcast,
            format: Format::Json,
            len: 2,
        };
        assert_eq!(plan(&req(POST), &cfg, || LOCAL), want);
        let refused = plan(&req(POST), &cfg, || REMOTE);
        assert!(
            matches!(refused, Plan::Refuse(r) if r.status == 403 && r.json),
            "{refused:?}"
        );
        assert_eq!(status(plan(&req(POST), &cfg, || None)), 403);
    }

    #[test]
    fn loopback_without_a_key_needs_a_host_that_is_an_address() {
        let cfg = Config::default();
        let with_host =
            |raw: &str, host: &str| req(&raw.replacen("\r\n", &format!("\r\nHost: {host}\r\n"), 1));
        let metrics = "GET /metrics HTTP/1.1\r\n\r\n";
        let history = "GET /api/history?topic=room:1 HTTP/1.1\r\n\r\n";
        let dashboard = "GET /dashboard HTTP/1.1\r\n\r\n";
        let on = Config::from_toml("dashboard = true").unwrap();
        let allowed = |p: Plan| !matches!(p, Plan::Refuse(_));
        for host in [
            "127.0.0.1:4000",
            "127.0.0.1",
            "[::1]:4000",
            "[::1]",
            "localhost:4000",
            "LocalHost.",
            "app.localhost:4000",
            "10.0.0.5:4000",
            "myhost:4000",
            "x",
        ] {
            for (raw, c) in [
                (POST, &cfg),
                (metrics, &cfg),
                (history, &cfg),
                (dashboard, &on),
            ] {
                assert!(
                    allowed(plan(&with_host(raw, host), c, || LOCAL)),
                    "{host} {raw:?}"
                );
            }
        }
        // A DNS name (a rebinding page, or a proxy's client's Host): refused from loopback.
        for host in [
            "evil.example:4000",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "[::1",
            "127.0.0.1:",
            "127.0.0.1:x",
            "::1",
            "",
        ] {
            for (raw, c) in [
                (POST, &cfg),
                (metrics, &cfg),
                (history, &cfg),
                (dashboard, &on),
            ] {
                let p = plan(&with_host(raw, host), c, || LOCAL);
                assert!(
                    matches!(&p, Plan::Refuse(r) if r.status == 403 && r.reason.contains("under an IP address, localhost")),
                    "{host} {raw:?}: {p:?}"
                );
            }
        }
        // With a key the Host does not matter.
        let keyed = Config::from_toml("api_key = \"k1\"").unwrap();
        let mut bearer = with_host(POST, "evil.example");
        bearer.authorization = Some("Bearer k1".into());
        assert_eq!(status(plan(&bearer, &keyed, || REMOTE)), 0);
    }

    #[test]
    fn api_history_is_a_get_under_the_api_rule() {
        let get = "GET /api/history?topic=room:1&since=3 HTTP/1.1\r\n\r\n";
        let cfg = Config::default();
        assert_eq!(plan(&req(get), &cfg, || LOCAL), Plan::History);
        assert_eq!(status(plan(&req(get), &cfg, || REMOTE)), 403);
        let post = "POST /api/history HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(status(plan(&req(post), &cfg, || LOCAL)), 405);
        let keyed = Config::from_toml("api_key = \"k1\"").unwrap();
        assert_eq!(status(plan(&req(get), &keyed, || LOCAL)), 401);
    }

    #[test]
    fn api_with_key_answers_any_address_with_the_key() {
        let cfg = Config::from_toml("api_key = \"k1\"").unwrap();
        let with = |auth: &str| req(&POST.replace("\r\n\r\n", &format!("\r\n{auth}\r\n\r\n")));
        let never = || -> Option<IpAddr> { panic!("the peer does not matter with a key") };
        assert_eq!(
            status(plan(&with("Authorization: Bearer k1"), &cfg, never)),
            0
        );
        assert_eq!(
            status(plan(&with("Authorization: bearer k1"), &cfg, never)),
            0
        );
        for bad in [
            "Authorization: Bearer k2",
            "Authorization: Bearer k",
            "Authorization: Basic k1",
        ] {
            let p = plan(&with(bad), &cfg, never);
            assert!(
                matches!(p, Plan::Refuse(r) if r.status == 401 && r.headers == BEARER),
                "{bad}"
            );
        }
        // The key is needed from loopback too.
        assert_eq!(status(plan(&req(POST), &cfg, || LOCAL)), 401);
    }

    #[test]
    fn api_origin_content_type_method_and_length() {
        let cfg = Config::from_toml("api_origins = [\"https://admin.example.com\"]").unwrap();
        let case =
            |old: &str, new: &str| status(plan(&req(&POST.replace(old, new)), &cfg, || LOCAL));
        let origin = |o: &str| format!("HTTP/1.1\r\nOrigin: {o}");
        assert_eq!(case("HTTP/1.1", &origin("https://evil.example")), 403);
        assert_eq!(case("HTTP/1.1", &origin("null")), 403);
        assert_eq!(case("HTTP/1.1", &origin("https://admin.example.com")), 0);
        let default = Config::default();
        let with_origin = req(&POST.replace("HTTP/1.1", &origin("http://127.0.0.1:4000")));
        assert_eq!(status(plan(&with_origin, &default, || LOCAL)), 403);

        assert_eq!(case("application/json", "text/plain"), 415);
        assert_eq!(case("Content-Type: application/json\r\n", ""), 415);
        assert_eq!(
            case("application/json", "application/json; charset=utf-8"),
            0
        );
        assert_eq!(
            case("application/json", "application/x-www-form-urlencoded"),
            415
        );
        let ndjson = plan(
            &req(&POST.replace("application/json", "application/x-ndjson")),
            &cfg,
            || LOCAL,
        );
        assert!(matches!(
            ndjson,
            Plan::Body {
                format: Format::NdJson,
                ..
            }
        ));
        assert_eq!(case("POST", "PUT"), 405);
        assert_eq!(case("/api/broadcast", "/api/nope"), 404);
        assert_eq!(case("/api/broadcast", "/api"), 404);
        assert_eq!(case("Content-Length: 2", "Transfer-Encoding: chunked"), 411);
        assert_eq!(case("Content-Length: 2\r\n", ""), 411);
        assert_eq!(case("Content-Length: 2", "Content-Length: 1048576"), 0);
        assert_eq!(case("Content-Length: 2", "Content-Length: 1048577"), 413);
    }

    #[test]
    fn a_caller_not_allowed_learns_nothing_about_the_api() {
        // The same 403 for a real endpoint, an unknown one, a wrong method or a bad body.
        let cfg = Config::default();
        for raw in [
            POST.to_string(),
            POST.replace("/api/broadcast", "/api/nope"),
            "GET /api/broadcast HTTP/1.1\r\n\r\n".into(),
            POST.replace("application/json", "text/plain"),
            POST.replace("Content-Length: 2", "Content-Length: 999999999"),
        ] {
            assert_eq!(status(plan(&req(&raw), &cfg, || REMOTE)), 403, "{raw}");
        }
    }

    #[test]
    fn metrics_and_health() {
        let get = |path: &str| req(&format!("GET {path} HTTP/1.1\r\n\r\n"));
        let cfg = Config::default();
        assert_eq!(plan(&get("/health"), &cfg, || REMOTE), Plan::Health);
        assert_eq!(plan(&get("/metrics"), &cfg, || LOCAL), Plan::Metrics);
        assert_eq!(status(plan(&get("/metrics"), &cfg, || REMOTE)), 403);
        let keyed = Config::from_toml("metrics_key = \"m1\"").unwrap();
        assert_eq!(status(plan(&get("/metrics"), &keyed, || LOCAL)), 401);
        let with_key = req("GET /metrics HTTP/1.1\r\nAuthorization: Bearer m1\r\n\r\n");
        assert_eq!(plan(&with_key, &keyed, || REMOTE), Plan::Metrics);
        let post = req("POST /health HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n");
        assert_eq!(status(plan(&post, &cfg, || LOCAL)), 405);
        let post = req("POST /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status(plan(&post, &cfg, || LOCAL)), 405);
        assert_eq!(status(plan(&get("/nope"), &cfg, || LOCAL)), 404);
    }

    #[test]
    fn dashboard_is_off_by_default_then_under_the_api_rule_with_the_key_in_the_query_too() {
        let get = |target: &str, extra: &str| {
            req(&format!(
                "GET {target} HTTP/1.1\r\nHost: localhost:4000\r\n{extra}\r\n"
            ))
        };
        let off = Config::default();
        for target in ["/dashboard", "/dashboard/live"] {
            assert_eq!(status(plan(&get(target, ""), &off, || LOCAL)), 404);
        }
        let on = Config::from_toml("dashboard = true").unwrap();
        assert_eq!(plan(&get("/dashboard", ""), &on, || LOCAL), Plan::Dashboard);
        assert_eq!(
            plan(&get("/dashboard/live", ""), &on, || LOCAL),
            Plan::DashboardLive
        );
        assert_eq!(status(plan(&get("/dashboard", ""), &on, || REMOTE)), 403);
        assert_eq!(
            status(plan(&get("/dashboard?key=k", ""), &on, || REMOTE)),
            403
        );
        assert_eq!(status(plan(&get("/dashboard/x", ""), &on, || LOCAL)), 404);
        let post = req("POST /dashboard HTTP/1.1\r\n\r\n");
        assert_eq!(status(plan(&post, &on, || LOCAL)), 405);
        // The socket: the page's own origin, or one of api_origins; no other page.
        let live = |origin: &str| get("/dashboard/live", &format!("Origin: {origin}\r\n"));
        assert_eq!(
            status(plan(&live("http://localhost:4000"), &on, || LOCAL)),
            200
        );
        assert_eq!(
            status(plan(&live("https://LOCALHOST:4000"), &on, || LOCAL)),
            200
        );
        for other in [
            "http://localhost:4001",
            "https://evil.example",
            "null",
            "localhost:4000",
        ] {
            assert_eq!(status(plan(&live(other), &on, || LOCAL)), 403, "{other}");
        }
        let listed =
            Config::from_toml("dashboard = true\napi_origins = [\"https://ops.example\"]").unwrap();
        assert_eq!(
            status(plan(&live("https://ops.example"), &listed, || LOCAL)),
            200
        );
        // With a key: bearer or `?key=`, from any address; never from loopback alone.
        let keyed = Config::from_toml("dashboard = true\napi_key = \"k 1\"").unwrap();
        let never = || -> Option<IpAddr> { panic!("the peer does not matter with a key") };
        for (target, extra, want) in [
            ("/dashboard", "", 401),
            ("/dashboard?key=k%201", "", 200),
            ("/dashboard?key=k+1", "", 200),
            ("/dashboard?x=1&key=k%201", "", 200),
            ("/dashboard?key=k", "", 401),
            ("/dashboard?key=k%201x", "", 401),
            ("/dashboard/live?key=k%201", "", 200),
            ("/dashboard/live", "", 401),
            ("/dashboard", "Authorization: Bearer k 1\r\n", 200),
        ] {
            let p = plan(&get(target, extra), &keyed, never);
            assert_eq!(status(p), want, "{target} {extra}");
            if want == 401 {
                assert!(matches!(p, Plan::Refuse(r) if r.headers == BEARER && !r.json));
            }
        }
        // Only there: the API takes no key from the query.
        let api = req(&POST.replace("/api/broadcast", "/api/broadcast?key=k%201"));
        assert_eq!(status(plan(&api, &keyed, never)), 401);
    }

    #[test]
    fn bodies_on_get_and_upgrades_are_refused() {
        let cfg = Config::from_toml("echo = true").unwrap();
        let upgrade =
            "GET /socket/websocket HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
        for raw in [
            "GET /health HTTP/1.1\r\nContent-Length: 1048576\r\n\r\n".to_string(),
            "HEAD /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            "GET /nope HTTP/1.1\r\nContent-Length: 1\r\n\r\n".into(),
            format!("{upgrade}Content-Length: 5\r\n\r\n"),
            format!(
                "{}Content-Length: 5\r\n\r\n",
                upgrade.replace("GET", "POST")
            ),
        ] {
            assert_eq!(status(plan(&req(&raw), &cfg, || LOCAL)), 400, "{raw}");
        }
        let empty = req("GET /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(plan(&empty, &cfg, || LOCAL), Plan::Health);
        assert_eq!(
            plan(&req(&format!("{upgrade}\r\n")), &cfg, || REMOTE),
            Plan::Phoenix
        );
        assert_eq!(
            plan(&req("GET /echo HTTP/1.1\r\n\r\n"), &cfg, || REMOTE),
            Plan::Echo
        );
    }

    #[test]
    fn metrics_and_health_errors_are_json() {
        let cfg = Config::default();
        for (raw, status) in [
            ("GET /metrics HTTP/1.1\r\n\r\n", 403),
            ("POST /health HTTP/1.1\r\n\r\n", 405),
            ("GET /health HTTP/1.1\r\nContent-Length: 3\r\n\r\n", 400),
        ] {
            let p = plan(&req(raw), &cfg, || REMOTE);
            assert!(
                matches!(p, Plan::Refuse(r) if r.status == status && r.json),
                "{raw}: {p:?}"
            );
        }
        let p = plan(&req("GET /nope HTTP/1.1\r\n\r\n"), &cfg, || LOCAL);
        assert!(matches!(p, Plan::Refuse(r) if r.status == 404 && !r.json));
    }

    #[test]
    fn keep_alive_needs_the_client_and_a_request_boundary() {
        let cfg = Config::default();
        let get = req("GET /health HTTP/1.1\r\n\r\n");
        assert!(keep_alive(&get, &cfg, false));
        let close = req("GET /health HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!keep_alive(&close, &cfg, true));
        assert!(!keep_alive(
            &req("GET /health HTTP/1.0\r\n\r\n"),
            &cfg,
            false
        ));
        let ten = req("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(keep_alive(&ten, &cfg, false));
        // A body: only once it was read.
        assert!(!keep_alive(&req(POST), &cfg, false));
        assert!(keep_alive(&req(POST), &cfg, true));
        let off = Config::from_toml("http_keepalive_ms = 0").unwrap();
        assert!(!keep_alive(&get, &off, false));
        let upgrade = "GET /nope HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        assert!(!keep_alive(&req(upgrade), &cfg, false));
    }

    #[test]
    fn answers_for_get_head_and_keep_alive() {
        let a = Answer::json(200, "{}");
        let mut get = Vec::new();
        write_answer(&mut get, false, &a, &[], Some(Duration::from_millis(5500)));
        let text = String::from_utf8(get.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("Connection: keep-alive\r\nKeep-Alive: timeout=5\r\n"));
        assert!(text.contains("Content-Length: 3\r\n") && text.ends_with("\r\n\r\n{}\n"));
        let mut head = Vec::new();
        write_answer(&mut head, true, &a, &[], Some(Duration::from_millis(5500)));
        assert_eq!(get, [&head[..], b"{}\n"].concat());
        let mut close = Vec::new();
        write_answer(&mut close, false, &a, &[("Allow", "GET")], None);
        let text = String::from_utf8(close).unwrap();
        assert!(
            text.contains("Connection: close\r\nAllow: GET\r\n") && !text.contains("Keep-Alive")
        );
        let mut short = Vec::new();
        write_answer(&mut short, false, &a, &[], Some(Duration::from_millis(500)));
        assert!(!String::from_utf8(short).unwrap().contains("Keep-Alive:"));
    }

    #[test]
    fn a_request_under_way_gets_the_handshake_timeout_in_keep_alive_steps() {
        let cfg =
            Config::from_toml("handshake_timeout_ms = 2500\nhttp_keepalive_ms = 1000").unwrap();
        let ms = Duration::from_millis;
        assert_eq!(recheck_after(ms(300), &cfg), Some(ms(1000)));
        assert_eq!(recheck_after(ms(2000), &cfg), Some(ms(500)));
        assert_eq!(recheck_after(ms(2500), &cfg), None);
        assert_eq!(recheck_after(ms(9000), &cfg), None);
    }

    #[test]
    fn refusal_bodies() {
        let (ct, body) = Refusal::BUSY.body();
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].as_str().unwrap().contains("busy"));
        assert_eq!(Refusal::BUSY.headers, [("Retry-After", "1")]);
        let (ct, body) = Refusal::new(404, "not found", false).body();
        assert_eq!((ct, &body[..]), ("text/plain", &b"not found\n"[..]));
    }

    #[test]
    fn body_budget_is_taken_and_given_back() {
        let stats = Arc::new(Stats::default());
        let gauge = || {
            stats
                .http_body_bytes
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        let a = BodyReservation::take(&stats, 100, 60).unwrap();
        assert!(BodyReservation::take(&stats, 100, 41).is_none());
        let b = BodyReservation::take(&stats, 100, 40).unwrap();
        assert_eq!((gauge(), a.bytes() + b.bytes()), (100, 100));
        drop(a);
        assert_eq!(gauge(), 40);
        let c = BodyReservation::take(&stats, 100, 60).unwrap();
        drop((b, c));
        assert_eq!(gauge(), 0);
        assert_eq!(
            stats
                .http_body_busy
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }
}
