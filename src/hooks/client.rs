//! The hooks thread and each core's end of it (see the module documentation of `hooks`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Hooks;
use crate::hooks::breaker::{Breaker, Change};
use crate::runtime::inbox::{self, Inbox};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect = 0,
    Join = 1,
    Push = 2,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::Connect, Hook::Join, Hook::Push];

    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Join => "join",
            Hook::Push => "push",
        }
    }
}

/// Which connection (slot key and generation) waits for an answer, and which of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub key: usize,
    pub generation: u32,
    pub seq: u32,
}

/// Why a hook gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No answer within `timeout_ms`.
    Timeout,
    /// The URL's circuit is open: not asked.
    CircuitOpen,
    /// Refused to connect, a non-2xx status, an answer too big.
    Backend,
    /// A 2xx answer whose body is not a JSON object.
    Malformed,
}

/// A backend's answer (its body, a JSON object as far as HTTP goes) or why there is none.
#[derive(Debug)]
pub struct Answer {
    pub ticket: Ticket,
    pub outcome: Result<Bytes, Failure>,
}

struct Request {
    hook: Hook,
    core: usize,
    ticket: Ticket,
    body: Vec<u8>,
}

/// Counters of one hook (node-wide; read by `/metrics`).
#[derive(Default)]
pub struct HookStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    /// Requests failed at once because the circuit was open.
    pub short_circuited: AtomicU64,
    /// Requests a core refused at once: its in-flight bound was reached, or the queue was full.
    pub busy: AtomicU64,
    /// 1 while the circuit is open (gauge).
    pub circuit_open: AtomicU64,
    /// Times the circuit opened.
    pub circuit_opens: AtomicU64,
}

/// What the hooks thread and `/metrics` share.
pub struct State {
    pub node: String,
    pub stats: [HookStats; 3],
}

impl State {
    pub fn of(&self, hook: Hook) -> &HookStats {
        &self.stats[hook as usize]
    }
}

/// One core's end: hand a request up (never waits), take the answers.
pub struct Link {
    up: mpsc::Sender<Request>,
    pub down: Inbox<Answer>,
    pub state: Arc<State>,
    core: usize,
}

impl Link {
    /// Ask `hook` with JSON `body` for `ticket`; false (counted) when the queue is full.
    pub fn ask(&self, hook: Hook, ticket: Ticket, body: Vec<u8>) -> bool {
        let r = Request {
            hook,
            core: self.core,
            ticket,
            body,
        };
        let ok = self.up.try_send(r).is_ok();
        if !ok {
            self.state.of(hook).busy.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// The hooks thread; stopped when dropped.
pub struct Thread {
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Thread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Start the hooks thread for `cores` cores.
pub fn start(cfg: &Hooks, node: String, cores: usize) -> std::io::Result<(Thread, Vec<Link>)> {
    let state = Arc::new(State {
        node,
        stats: Default::default(),
    });
    // Each core has at most `max_in_flight_per_core` requests out, so its answers always fit.
    let per_core = cfg.max_in_flight_per_core;
    let (up_tx, up_rx) = mpsc::channel(per_core.saturating_mul(cores).clamp(1, 1 << 20));
    let mut downs = Vec::with_capacity(cores);
    let mut links = Vec::with_capacity(cores);
    for core in 0..cores {
        let (tx, rx) = inbox::inbox(per_core + 16);
        downs.push(tx);
        links.push(Link {
            up: up_tx.clone(),
            down: rx,
            state: state.clone(),
            core,
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (cfg, st) = (cfg.clone(), state.clone());
    let thread = crate::runtime::inbox::spawn_tokio_thread("corecast-hooks", "hooks", move || {
        run(cfg, st, up_rx, downs, stop_rx)
    })?;
    Ok((
        Thread {
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        },
        links,
    ))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn run(
    cfg: Hooks,
    state: Arc<State>,
    mut up: mpsc::Receiver<Request>,
    downs: Vec<inbox::Sender<Answer>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(cfg.timeout_ms)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.max_idle_connections)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let urls: [Option<hyper::Uri>; 3] = [&cfg.connect_url, &cfg.join_url, &cfg.push_url]
        .map(|u| u.as_deref().and_then(|u| u.parse().ok()));
    let breakers: Arc<[Mutex<Breaker>; 3]> = Arc::new(Default::default());
    let cfg = Arc::new(cfg);
    let downs = Arc::new(downs);
    loop {
        let req = tokio::select! {
            _ = &mut stop => return,
            r = up.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let i = req.hook as usize;
        let stats = state.of(req.hook);
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let allowed = breakers[i]
            .lock()
            .map(|mut b| b.allow(Instant::now()))
            .unwrap_or(true);
        let Some(uri) = urls[i].clone().filter(|_| allowed) else {
            stats.short_circuited.fetch_add(1, Ordering::Relaxed);
            answer(&downs, req.core, req.ticket, Err(Failure::CircuitOpen));
            continue;
        };
        let (client, st, br, cfg, downs) = (
            client.clone(),
            state.clone(),
            breakers.clone(),
            cfg.clone(),
            downs.clone(),
        );
        tokio::spawn(async move {
            let timeout = Duration::from_millis(cfg.timeout_ms);
            let outcome = match tokio::time::timeout(
                timeout,
                post(&client, uri, req.body, cfg.max_answer_bytes),
            )
            .await
            {
                Ok(Ok(body)) if is_json_object(&body) => Ok(body),
                Ok(Ok(_)) => Err(Failure::Malformed),
                Ok(Err(())) => Err(Failure::Backend),
                Err(_) => Err(Failure::Timeout),
            };
            let stats = st.of(req.hook);
            let change = match &outcome {
                Ok(_) => br[i]
                    .lock()
                    .map(|mut b| b.success())
                    .unwrap_or(Change::None),
                Err(f) => {
                    stats.failures.fetch_add(1, Ordering::Relaxed);
                    if *f == Failure::Timeout {
                        stats.timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                    let open_for = Duration::from_millis(cfg.circuit_open_ms);
                    br[i]
                        .lock()
                        .map(|mut b| b.failure(Instant::now(), cfg.circuit_failures, open_for))
                        .unwrap_or(Change::None)
                }
            };
            match change {
                Change::Opened => {
                    stats.circuit_open.store(1, Ordering::Relaxed);
                    stats.circuit_opens.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        hook = req.hook.name(),
                        failures = cfg.circuit_failures,
                        open_ms = cfg.circuit_open_ms,
                        "hooks: circuit opened: the backend failed repeatedly; its requests fail at once for a while"
                    );
                }
                Change::Closed => {
                    stats.circuit_open.store(0, Ordering::Relaxed);
                    info!(
                        hook = req.hook.name(),
                        "hooks: circuit closed: the backend answers again"
                    );
                }
                Change::None => {}
            }
            answer(&downs, req.core, req.ticket, outcome);
        });
    }
}

/// Hand an answer to its core. The queue holds every answer the core can be waiting for, so it
/// is never full; were it, the answer is lost and the connection waits until its idle timeout.
fn answer(
    downs: &[inbox::Sender<Answer>],
    core: usize,
    ticket: Ticket,
    outcome: Result<Bytes, Failure>,
) {
    if let Some(tx) = downs.get(core)
        && tx.try_send(Answer { ticket, outcome }).is_err()
    {
        warn!(
            core,
            "hooks: a core's answer queue is full; an answer is lost"
        );
    }
}

/// Whether a backend's answer is a JSON object (checked here, off the cores, so that a backend
/// that answers garbage counts towards its circuit like one that does not answer; what the
/// object says is read by the core).
fn is_json_object(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// POST `body` as JSON; the answer's body if 2xx and at most `max` bytes.
async fn post(
    client: &HttpClient,
    uri: hyper::Uri,
    body: Vec<u8>,
    max: usize,
) -> Result<Bytes, ()> {
    let req = hyper::Request::post(uri)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ())?;
    let resp = client.request(req).await.map_err(|_| ())?;
    if !resp.status().is_success() {
        return Err(());
    }
    let body = Limited::new(resp.into_body(), max)
        .collect()
        .await
        .map_err(|_| ())?;
    Ok(body.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_json_object_is_an_answer() {
        assert!(is_json_object(br#"{"allow":true}"#));
        assert!(is_json_object(b" \n{}\n"));
        for bad in [
            &b""[..],
            b"[]",
            b"null",
            b"\"ok\"",
            b"{",
            b"{\"a\":}",
            b"{} {}",
            b"<html>",
        ] {
            assert!(!is_json_object(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
