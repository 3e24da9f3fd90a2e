//! Server configuration: embedded defaults, an optional TOML file, then command-line overrides.
//!
//! Every field has a default that works with no file at all; a TOML file may set any of them
//! (unknown keys are rejected so a typo does not silently fall back to a default).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Everything a running server needs to know. Shared read-only by every core.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every core listens on (each core binds its own SO_REUSEPORT socket).
    pub listen: SocketAddr,
    /// Number of cores (one pinned executor each); 0 means every CPU this process may run on.
    pub cores: usize,
    /// Listen backlog of each core's socket.
    pub backlog: u32,
    /// Serve the plain RFC 6455 echo endpoint `GET /echo` (for the conformance suite).
    pub echo: bool,
    /// Largest frame payload accepted from a client, in bytes (close 1009 above it).
    pub max_frame: usize,
    /// Largest (reassembled) message accepted from a client, in bytes (close 1009 above it).
    pub max_message: usize,
    /// Largest HTTP request head, in bytes (431 above it).
    pub max_request_head: usize,
    /// Largest HTTP request body (`POST /api/...`), in bytes (413 above it, answered from the
    /// head before any body byte is read).
    pub max_request_body: usize,
    /// Request-body bytes one core holds at once, over all its connections (reserved from the
    /// `Content-Length` when a request head is accepted, given back when the request is answered
    /// or its connection closes). A request that would pass it is answered 503 with
    /// `Retry-After: 1`, before any body byte is read. Per core: the process holds at most
    /// cores x this in request bodies. Must be >= `max_request_body`.
    pub max_body_bytes_in_flight: usize,
    /// A connection that has not completed its HTTP request within this time is closed (on a
    /// kept-alive connection: each request, from its first byte).
    pub handshake_timeout_ms: u64,
    /// HTTP keep-alive: after answering a plain HTTP request (`/api/*`, `/health`, `/metrics`)
    /// the connection waits this long for the next request, then is closed without a word. The
    /// idle wait holds no buffer (like an idle WebSocket). There is no cap on requests per
    /// connection: a publisher that stays on one connection stays on one core, which is what
    /// keeps its publications in order. 0: no keep-alive, every answer closes its connection.
    pub http_keepalive_ms: u64,
    /// Publications one `POST /api/broadcast` batch (a JSON array, or NDJSON lines) may carry;
    /// more is answered 413 and nothing is published. The body is bounded by `max_request_body`
    /// as well.
    pub max_broadcast_batch: usize,
    /// After sending a close frame, how long to wait for the peer's close before dropping the socket.
    pub close_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long open connections get to close before the process exits.
    pub shutdown_timeout_ms: u64,
    /// Per-connection outbound queue bound, in bytes. A connection over it is closed with 1013
    /// (broadcast fan-out) or stops being read until it drains (its own replies and echoes).
    pub out_queue_max_bytes: usize,
    /// Per-connection outbound queue bound, in frames.
    pub out_queue_max_frames: usize,
    /// A WebSocket (Phoenix or echo) that sends nothing (not even a heartbeat) for this long is
    /// closed with 1008. While a data message is incomplete, only reads that complete one (or
    /// start the next) count as activity: pings alone do not keep such a socket.
    pub idle_timeout_ms: u64,
    /// A data message (every frame of a fragmented one, or the bytes of one big frame) must be
    /// complete this long after its first bytes arrived; a socket whose message is still
    /// incomplete then is closed with 1008 when it next sends anything (or, if it sends
    /// nothing, at its idle timeout). 30 s lets a `max_message` of 1 MiB arrive over an
    /// uplink of 300 kbit/s; phoenix.js messages are usually a few KB and arrive in one read.
    pub message_timeout_ms: u64,
    /// Heap bytes all sockets of one core may hold at once for partial frames and fragmented
    /// messages. The read that would take a core past it closes its socket with 1013 (try
    /// again later) before allocating. The default, 64 MiB, holds 32 messages of the default
    /// `max_frame` + `max_message` (1 MiB each) in flight on every core; phoenix.js traffic
    /// holds next to nothing (a message arrives whole in one read and is handled in place).
    /// Must hold at least one largest message: `max_frame + max_message + 14`.
    pub max_partial_bytes_per_core: usize,
    /// Channels one socket may join at once ("too many channels joined" above it).
    pub max_channels: usize,
    /// Longest topic name accepted, in bytes.
    pub max_topic_len: usize,
    /// Joinable topic patterns: exact names, or a prefix ending in `*` (`room:*`). Empty: any.
    pub topics: Vec<String>,
    /// Shared secret of connection tokens (JWT, HS256/384/512 as `jwt_algorithm` says; see
    /// `corecast token`). Tokens are verified when a key is set (this, `jwt_public_key_file` or
    /// `jwks_file`).
    pub auth_secret: Option<String>,
    /// The JWT algorithm tokens must use: HS256 (default), HS384, HS512 with `auth_secret`;
    /// RS256 or ES256 with `jwt_public_key_file`. A JWKS file's keys bring their own.
    pub jwt_algorithm: String,
    /// PEM public key (RSA for RS256, EC P-256 for ES256) tokens are verified with.
    pub jwt_public_key_file: Option<std::path::PathBuf>,
    /// A JWKS file (`{"keys": [...]}`): a token's `kid` picks its key; re-read within a second of
    /// a change (a file that does not load keeps the old keys). With `auth_secret` or
    /// `jwt_public_key_file` too, a token without `kid` is verified with that key.
    pub jwks_file: Option<std::path::PathBuf>,
    /// Seconds of clock difference allowed on `exp`, `nbf`, `iat` and the lifetime bound.
    pub jwt_leeway_secs: u64,
    /// When set, a token's `aud` must be this.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be this.
    pub jwt_issuer: Option<String>,
    /// Refuse sockets (HTTP 403) that bring no valid token. Needs a token key.
    pub require_token: bool,
    /// Longest token lifetime accepted: a token whose `exp` is more than this (plus
    /// `jwt_leeway_secs` for clocks that disagree) after now is refused with 403, so a leaked token is good for at
    /// most this long. One day, as `Phoenix.Token.verify`'s default `max_age`; `corecast
    /// token` refuses to mint longer-lived tokens unless told `--max-age-secs`.
    pub token_max_age_secs: u64,
    /// If set, `/api/*` needs `Authorization: Bearer <api_key>` (401 without it) and answers
    /// any address that has it. If not set, `/api/*` answers loopback peers only (403 for any
    /// other address). Behind a reverse proxy on the same host every request comes from
    /// loopback: set a key there.
    pub api_key: Option<String>,
    /// Origins allowed to call `/api/*` from a browser, in the syntax of `check_origin`. A request
    /// that carries an `Origin` header is refused (403) unless its origin is listed; empty (the
    /// default): every request with an `Origin` header is refused, so no web page a user visits
    /// can publish (CSRF). Servers and scripts send no `Origin` and are not affected.
    pub api_origins: Vec<String>,
    /// If set, `GET /metrics` needs `Authorization: Bearer <metrics_key>` from any address (401
    /// without it). If not set, `/metrics` answers loopback peers only (403 otherwise).
    pub metrics_key: Option<String>,
    /// Serve the live dashboard, `GET /dashboard` (a page) and `GET /dashboard/live` (its
    /// WebSocket: one JSON frame a second), under the access rule of `/api/*`: loopback peers
    /// only without `api_key`; with it, the key as a bearer token or as `?key=<api_key>` (a
    /// browser cannot set a header on a page load or a WebSocket). Off: both are 404.
    pub dashboard: bool,
    /// Serve Phoenix's long-poll transport at `/socket/longpoll` (phoenix.js `LongPoll`, and its
    /// fallback from a refused WebSocket, `longPollFallbackMs`). Off: 404.
    pub longpoll: bool,
    /// How long a poll waits for messages before it is answered `{"status":204}` (Phoenix's
    /// `window_ms`). A session with no poll for 1.5 windows is closed (its channels left).
    pub longpoll_window_ms: u64,
    /// Long-poll sessions the process holds at once (split evenly over the cores); a new one
    /// past it is answered `{"status":500}` (phoenix.js retries with its back-off).
    pub max_longpoll_sessions: usize,
    /// Cross-core outbox bound per peer core, in broadcasts. From half of it (or of
    /// `mesh_outbox_bytes`) the core stops reading its sockets until the outbox is down to a
    /// quarter; a broadcast that would pass the bound anyway is dropped for that core and
    /// counted. At least 16,384: one 64 KiB read can still publish ~5,000 tiny broadcasts.
    pub mesh_outbox: usize,
    /// Cross-core outbox bound per peer core, in bytes (frames, topics and bookkeeping of the
    /// broadcasts queued for that core and not yet taken off its ring). The same marks and drop
    /// rule as `mesh_outbox`. At least 2 x (max(max_message, max_request_body) + 512 KiB): the
    /// half above the mark must hold what one read or one request can still publish.
    pub mesh_outbox_bytes: usize,
    /// Allowed `Origin` headers for sockets (like Phoenix's `check_origin`): a full origin
    /// (`https://app.example.com`) or a host pattern (`//example.com`, `//*.example.com`).
    /// Empty: any. A request without an Origin header (not a browser) is allowed.
    pub check_origin: Vec<String>,
    /// Frames of any kind (data, continuation, ping, pong, close) a socket may send per
    /// second, from a bucket that holds one second's worth and refills every 100 ms; a socket
    /// over it is closed with 1008. 0: no limit; at most 1,000,000.
    ///
    /// The default, 200, is what no honest phoenix.js app reaches and what bounds a flooder:
    /// phoenix.js sends a heartbeat every 30 s and one frame per push; typing indicators and
    /// cursors push 30-60 a second (3x headroom, also for a 120 Hz pointer); after a reconnect
    /// phoenix.js rejoins every channel at once (at most `max_channels`, 100, in one burst)
    /// and flushes the pushes it buffered. A flooder gets 200 a second instead of all a core
    /// can parse (900,000 a second in issue 10). Raise it with `max_channels`, or for load
    /// tests that push faster from one socket.
    pub max_messages_per_sec: u32,
    /// Completion-queue entries of each core's readiness ring: how many socket readiness events
    /// one core can take in a burst before the kernel holds the rest back (then connections
    /// re-arm their polls, which costs time, not messages). Power of two, 16 to 65,536 (the
    /// kernel's limit).
    pub ring_entries: u32,
    /// Presence topics: patterns like `topics`. A socket that joins one is tracked (phoenix.js
    /// `Presence` works with no server code) under its token's subject, or its own random id
    /// when `presence_anonymous` allows it; otherwise it is not tracked. Empty: no presence.
    pub presence: Vec<String>,
    /// Track sockets without a token under their own random socket id (never a key the client
    /// chooses).
    pub presence_anonymous: bool,
    /// Presence changes of one topic are sent as one `presence_diff` per this window (rounded up
    /// to the 100 ms tick): a join storm costs a few diffs, not one per join.
    pub presence_diff_window_ms: u64,
    /// Presences one topic may hold; a join past it is refused `{"reason":"too many presences"}`.
    pub max_presences_per_topic: usize,
    /// Bytes of the `meta` object a client may give in its join payload.
    pub max_presence_meta_bytes: usize,
    /// Several nodes as one server over NATS (`[cluster]`); absent: a single node, with no NATS
    /// code on any path.
    pub cluster: Option<Cluster>,
    /// History topics (`[[history]]`): one order per topic and the last publications kept for
    /// recovery (see `pubsub::history`). Empty: no history, nothing on any path.
    pub history: Vec<HistoryRule>,
    /// Bytes of publications one core's history may hold, over all its topics.
    pub history_max_bytes: usize,
    /// Publications a recovering join may be sent; a longer gap answers `"recovered": false`.
    pub history_max_replay: usize,
    /// The key under which a history topic's JSON broadcasts carry their position.
    pub history_pos_key: String,
    /// HTTP hooks to the app's backend (`[hooks]`); absent: no hook thread, no check on any path.
    pub hooks: Option<Hooks>,
}

/// `[hooks]`: the app backend's say on connects, joins and pushes (see docs/hooks.md). Every URL
/// is optional; `http://` only (a backend on the same host or network; put TLS in front of it
/// yourself).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Hooks {
    /// Asked at each Phoenix upgrade: may refuse the socket, may set its subject, id and info.
    pub connect_url: Option<String>,
    /// Asked at each join of a topic matching `join_topics`: allow (with the reply payload) or refuse.
    pub join_url: Option<String>,
    /// Asked at each push on a topic matching `push_topics`: the reply, and whether to broadcast.
    pub push_url: Option<String>,
    /// Topic patterns (as `topics`) whose joins go to `join_url`; empty: every topic.
    pub join_topics: Vec<String>,
    /// Topic patterns whose pushes go to `push_url`; empty: every topic.
    pub push_topics: Vec<String>,
    /// How long one hook may take; then the join (push, connect) is answered as timed out.
    pub timeout_ms: u64,
    /// Hook requests one core may have waiting at once; past it a join or push is refused at
    /// once (`{"reason":"too many pending hooks"}`), a connect answered 503.
    pub max_in_flight_per_core: usize,
    /// Consecutive failures (timeouts, errors, non-2xx, bad JSON) of one hook URL that open its
    /// circuit: while open, that hook's requests fail at once without reaching the backend.
    pub circuit_failures: u32,
    /// How long an open circuit stays open before one trial request may close it again.
    pub circuit_open_ms: u64,
    /// Largest backend answer read, in bytes (a bigger one is a failure).
    pub max_answer_bytes: usize,
    /// Keep-alive connections to the backend kept idle, per hook host.
    pub max_idle_connections: usize,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            connect_url: None,
            join_url: None,
            push_url: None,
            join_topics: Vec::new(),
            push_topics: Vec::new(),
            timeout_ms: 2_000,
            max_in_flight_per_core: 1_024,
            circuit_failures: 5,
            circuit_open_ms: 5_000,
            max_answer_bytes: 64 << 10,
            max_idle_connections: 64,
        }
    }
}

/// `[[history]]`: topics matching `pattern` keep their last `size` publications for `ttl_secs`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HistoryRule {
    pub pattern: String,
    pub size: usize,
    pub ttl_secs: u64,
}

/// `[cluster]`: how this node joins the others (see ARCHITECTURE.md "Cluster").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// NATS servers (one, or several of a NATS cluster), e.g. `["nats://10.0.0.5:4222"]`.
    pub nats_url: Vec<String>,
    /// This node's name, in logs and NATS (default: hostname and pid).
    pub node: Option<String>,
    /// NATS credentials: user and password, a token, or a `.creds` file.
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    pub creds_file: Option<std::path::PathBuf>,
    /// A CA certificate (PEM) to verify the NATS servers' TLS; `tls_required` refuses plain.
    pub tls_ca_file: Option<std::path::PathBuf>,
    pub tls_required: bool,
    /// Subjects start with this (`<prefix>.t.<topic>`): several clusters can share one NATS.
    pub subject_prefix: String,
    /// Publications a core may hand the bridge before it waits for NATS; more are dropped and
    /// counted (`corecast_cluster_dropped_total`).
    pub queue: usize,
    /// Presence: how often a node tells the others it is alive, and after how long without a
    /// word from a node its presences are shown as leaves.
    pub presence_heartbeat_ms: u64,
    pub down_period_ms: u64,
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            nats_url: vec!["nats://127.0.0.1:4222".into()],
            node: None,
            user: None,
            password: None,
            token: None,
            creds_file: None,
            tls_ca_file: None,
            tls_required: false,
            subject_prefix: "corecast".into(),
            queue: 65_536,
            presence_heartbeat_ms: 1_500,
            down_period_ms: 30_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 4000)),
            cores: 0,
            backlog: 4096,
            echo: false,
            max_frame: 1 << 20,
            max_message: 1 << 20,
            max_request_head: 8 * 1024,
            max_request_body: 1 << 20,
            max_body_bytes_in_flight: 8 << 20,
            handshake_timeout_ms: 10_000,
            http_keepalive_ms: 5_000,
            max_broadcast_batch: 1_000,
            close_timeout_ms: 2_000,
            shutdown_timeout_ms: 10_000,
            out_queue_max_bytes: 4 << 20,
            out_queue_max_frames: 4096,
            idle_timeout_ms: 60_000,
            message_timeout_ms: 30_000,
            max_partial_bytes_per_core: 64 << 20,
            max_channels: 100,
            max_topic_len: 255,
            topics: Vec::new(),
            auth_secret: None,
            jwt_algorithm: "HS256".into(),
            jwt_public_key_file: None,
            jwks_file: None,
            jwt_leeway_secs: 60,
            jwt_audience: None,
            jwt_issuer: None,
            require_token: false,
            token_max_age_secs: 86_400,
            api_key: None,
            api_origins: Vec::new(),
            metrics_key: None,
            dashboard: false,
            longpoll: true,
            longpoll_window_ms: 10_000,
            max_longpoll_sessions: 100_000,
            mesh_outbox: 65_536,
            mesh_outbox_bytes: 64 << 20,
            check_origin: Vec::new(),
            max_messages_per_sec: 200,
            ring_entries: 16_384,
            presence: Vec::new(),
            presence_anonymous: false,
            presence_diff_window_ms: 100,
            max_presences_per_topic: 100_000,
            max_presence_meta_bytes: 1024,
            cluster: None,
            history: Vec::new(),
            history_max_bytes: 64 << 20,
            history_max_replay: 1_000,
            history_pos_key: "_pos".into(),
            hooks: None,
        }
    }
}

/// The algorithms `jwt_algorithm` may name.
pub const JWT_ALGORITHMS: &[&str] = &["HS256", "HS384", "HS512", "RS256", "ES256"];

/// The smallest `mesh_outbox` accepted (see its documentation).
pub const MIN_MESH_OUTBOX: usize = 16_384;

/// Why a configuration could not be loaded. The binary prints it and exits with status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Read a TOML file; keys it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parse TOML text; keys it does not set keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            source: Box::new(e),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject values the server cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.max_frame == 0 || self.max_message == 0 {
            return bad("max_frame and max_message must be > 0");
        }
        if self.max_frame > 1 << 30 || self.max_message > 1 << 30 {
            return bad("max_frame and max_message must be <= 1 GiB");
        }
        if self.max_request_head < 256 {
            return bad("max_request_head must be >= 256");
        }
        if self.backlog == 0 {
            return bad("backlog must be > 0");
        }
        if self.out_queue_max_frames == 0 || self.out_queue_max_bytes == 0 {
            return bad("out_queue_max_frames and out_queue_max_bytes must be > 0");
        }
        if self.handshake_timeout_ms == 0
            || self.close_timeout_ms == 0
            || self.idle_timeout_ms == 0
            || self.message_timeout_ms == 0
        {
            return bad("timeouts must be > 0");
        }
        if self.max_partial_bytes_per_core < self.max_frame + self.max_message + 14 {
            return bad(
                "max_partial_bytes_per_core must hold one largest message: at least max_frame + max_message + 14",
            );
        }
        if self.token_max_age_secs == 0 {
            return bad("token_max_age_secs must be > 0");
        }
        if self.max_messages_per_sec > 1_000_000 {
            return bad("max_messages_per_sec must be <= 1000000 (0: no limit)");
        }
        if !self.ring_entries.is_power_of_two() || !(16..=1 << 16).contains(&self.ring_entries) {
            return bad("ring_entries must be a power of two from 16 to 65536");
        }
        if !(100..=600_000).contains(&self.longpoll_window_ms) {
            return bad("longpoll_window_ms must be from 100 to 600000");
        }
        if self.max_broadcast_batch == 0 {
            return bad("max_broadcast_batch must be > 0");
        }
        if self.max_body_bytes_in_flight < self.max_request_body {
            return bad("max_body_bytes_in_flight must be >= max_request_body");
        }
        if self.api_key.as_deref() == Some("") || self.metrics_key.as_deref() == Some("") {
            return bad("api_key and metrics_key must not be empty (leave them out instead)");
        }
        if self.mesh_outbox < MIN_MESH_OUTBOX {
            return bad(&format!("mesh_outbox must be >= {MIN_MESH_OUTBOX}"));
        }
        if self.mesh_outbox_bytes < self.min_mesh_outbox_bytes() {
            return bad(&format!(
                "mesh_outbox_bytes must be >= 2 x (max(max_message, max_request_body) + 512 KiB) \
                 = {} here: from half of it the core stops reading, and the other half must hold \
                 what one read or one request can still publish",
                self.min_mesh_outbox_bytes()
            ));
        }
        let has_key = self.auth_secret.is_some()
            || self.jwt_public_key_file.is_some()
            || self.jwks_file.is_some();
        if self.require_token && !has_key {
            return bad("require_token needs auth_secret, jwt_public_key_file or jwks_file");
        }
        if !JWT_ALGORITHMS.contains(&self.jwt_algorithm.as_str()) {
            return bad("jwt_algorithm must be HS256, HS384, HS512, RS256 or ES256");
        }
        if self.jwt_leeway_secs > 3600 {
            return bad("jwt_leeway_secs must be <= 3600");
        }
        if let Some(c) = &self.cluster {
            if c.nats_url.is_empty() {
                return bad("cluster.nats_url must list at least one NATS server");
            }
            let valid = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            };
            if !valid(&c.subject_prefix) {
                return bad("cluster.subject_prefix must be letters, digits, - or _");
            }
            if c.queue == 0 || c.presence_heartbeat_ms == 0 || c.down_period_ms == 0 {
                return bad("cluster.queue, presence_heartbeat_ms and down_period_ms must be > 0");
            }
            if c.down_period_ms <= c.presence_heartbeat_ms {
                return bad("cluster.down_period_ms must be longer than presence_heartbeat_ms");
            }
            if c.password.is_some() != c.user.is_some() {
                return bad("cluster.user and cluster.password go together");
            }
        }
        if let Some(h) = &self.hooks {
            for url in [&h.connect_url, &h.join_url, &h.push_url]
                .into_iter()
                .flatten()
            {
                if !url.starts_with("http://") || url.len() <= "http://".len() {
                    return bad(&format!("hooks: {url:?} must be an http:// URL"));
                }
            }
            if h.timeout_ms == 0 || h.timeout_ms > 60_000 {
                return bad("hooks.timeout_ms must be from 1 to 60000");
            }
            if h.max_in_flight_per_core == 0 || h.max_in_flight_per_core > 1 << 20 {
                return bad("hooks.max_in_flight_per_core must be from 1 to 1048576");
            }
            if h.circuit_failures == 0 || h.circuit_open_ms == 0 {
                return bad("hooks.circuit_failures and circuit_open_ms must be > 0");
            }
            if h.max_answer_bytes < 64 || h.max_answer_bytes > self.max_message {
                return bad("hooks.max_answer_bytes must be from 64 to max_message");
            }
            if let Some(p) = h
                .join_topics
                .iter()
                .chain(&h.push_topics)
                .find(|p| p.find('*').is_some_and(|i| i != p.len() - 1))
            {
                return bad(&format!(
                    "hooks topic pattern {p:?}: '*' is only allowed at the end"
                ));
            }
        }
        if self.presence_diff_window_ms == 0 || self.presence_diff_window_ms > 60_000 {
            return bad("presence_diff_window_ms must be from 1 to 60000");
        }
        if self.max_presences_per_topic == 0 || self.max_presence_meta_bytes < 2 {
            return bad("max_presences_per_topic must be > 0 and max_presence_meta_bytes >= 2");
        }
        if let Some(r) = self
            .history
            .iter()
            .find(|r| r.size == 0 || r.size > 100_000 || r.ttl_secs == 0 || r.ttl_secs > 86_400 * 7)
        {
            return bad(&format!(
                "history {:?}: size must be from 1 to 100000 and ttl_secs from 1 to 604800",
                r.pattern
            ));
        }
        if !self.history.is_empty()
            && (self.history_max_replay == 0
                || self.history_max_replay > self.out_queue_max_frames / 2)
        {
            return bad("history_max_replay must be from 1 to out_queue_max_frames / 2");
        }
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.len() <= 32
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        if !key_ok(&self.history_pos_key) {
            return bad("history_pos_key must be 1 to 32 ASCII letters, digits or '_'");
        }
        if let Some(p) = self
            .topics
            .iter()
            .chain(&self.presence)
            .chain(self.history.iter().map(|r| &r.pattern))
            .find(|p| p.find('*').is_some_and(|i| i != p.len() - 1))
        {
            return bad(&format!(
                "topic pattern {p:?}: '*' is only allowed at the end"
            ));
        }
        Ok(())
    }

    /// The smallest `mesh_outbox_bytes` that keeps pushback ahead of the bound: the core stops
    /// reading at half of it, and after that check one read can still complete a message of up to
    /// `max_message` plus 64 KiB of small ones (their envelopes cost up to ~6x their wire
    /// bytes), or one `POST /api/broadcast` of up to `max_request_body`.
    pub fn min_mesh_outbox_bytes(&self) -> usize {
        2 * (self.max_message.max(self.max_request_body) + (512 << 10))
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The keep-alive wait, or `None` when keep-alive is off (`http_keepalive_ms = 0`).
    pub fn http_keepalive(&self) -> Option<Duration> {
        (self.http_keepalive_ms > 0).then(|| Duration::from_millis(self.http_keepalive_ms))
    }

    /// The long-poll window (see `longpoll_window_ms`).
    pub fn longpoll_window(&self) -> Duration {
        Duration::from_millis(self.longpoll_window_ms)
    }

    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown_timeout_ms)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }

    pub fn message_timeout(&self) -> Duration {
        Duration::from_millis(self.message_timeout_ms)
    }

    /// Whether `topic` may be joined under the `topics` patterns.
    pub fn topic_allowed(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.len() > self.max_topic_len {
            return false;
        }
        self.topics.is_empty()
            || self.topics.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == p,
            })
    }

    /// Whether `topic` matches one of `patterns` (exact names, or a prefix ending in `*`).
    pub fn pattern_matches(patterns: &[String], topic: &str) -> bool {
        patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => topic == p,
        })
    }

    /// Whether `topic` is a presence topic (see `presence`).
    pub fn presence_topic(&self, topic: &str) -> bool {
        self.presence.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => topic == p,
        })
    }

    /// The `[[history]]` rule of `topic` (the first that matches), if it is a history topic.
    pub fn history_rule(&self, topic: &str) -> Option<&HistoryRule> {
        self.history
            .iter()
            .find(|r| match r.pattern.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == r.pattern,
            })
    }

    /// Whether a socket with this `Origin` header may connect under `check_origin`.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        self.check_origin.is_empty() || origin_matches(&self.check_origin, origin)
    }

    /// Whether a request to `/api/*` with this `Origin` header is allowed under `api_origins`
    /// (an empty list allows none).
    pub fn api_origin_allowed(&self, origin: &str) -> bool {
        origin_matches(&self.api_origins, origin)
    }

    /// The frame limits handed to the protocol decoder.
    pub fn frame_limits(&self) -> crate::proto::frame::Limits {
        crate::proto::frame::Limits {
            max_frame: self.max_frame,
            max_message: self.max_message,
            max_buffered: usize::MAX,
        }
    }
}

/// Whether `origin` matches one of `patterns`: a full origin (compared case-insensitively) or a
/// host pattern `//host` / `//*.domain` (the origin's host, port and scheme aside).
fn origin_matches(patterns: &[String], origin: &str) -> bool {
    let host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .split(['/', ':'])
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    patterns
        .iter()
        .any(|allowed| match allowed.strip_prefix("//") {
            Some(pattern) => match pattern.strip_prefix("*.") {
                Some(domain) => host == domain || host.ends_with(&format!(".{domain}")),
                None => host == pattern.to_ascii_lowercase(),
            },
            None => allowed.eq_ignore_ascii_case(origin),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_some_keys() {
        let c = Config::from_toml("listen = \"127.0.0.1:9001\"\necho = true\nmax_frame = 100\n")
            .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap());
        assert!(c.echo);
        assert_eq!(c.max_frame, 100);
        assert_eq!(c.backlog, 4096);
    }

    #[test]
    fn unknown_key_is_an_error() {
        let e = Config::from_toml("lissten = \"127.0.0.1:1\"").unwrap_err();
        assert!(e.to_string().contains("lissten"), "{e}");
    }

    #[test]
    fn topic_patterns() {
        let c = Config::from_toml("topics = [\"room:*\", \"lobby\"]").unwrap();
        assert!(c.topic_allowed("room:1"));
        assert!(c.topic_allowed("room:"));
        assert!(c.topic_allowed("lobby"));
        assert!(!c.topic_allowed("lobby2"));
        assert!(!c.topic_allowed("chat:1"));
        assert!(Config::default().topic_allowed("anything"));
        assert!(!Config::default().topic_allowed(""));
        assert!(!Config::default().topic_allowed(&"x".repeat(256)));
        assert!(Config::from_toml("topics = [\"a*b\"]").is_err());
    }

    #[test]
    fn history_rules() {
        let c = Config::from_toml(
            "[[history]]\npattern = \"room:*\"\nsize = 100\nttl_secs = 300\n\
             [[history]]\npattern = \"lobby\"\nsize = 5\nttl_secs = 10",
        )
        .unwrap();
        assert_eq!(c.history_rule("room:1").map(|r| r.size), Some(100));
        assert_eq!(c.history_rule("lobby").map(|r| r.ttl_secs), Some(10));
        assert!(c.history_rule("lobby2").is_none());
        assert!(Config::default().history_rule("room:1").is_none());
        for bad in [
            "[[history]]\npattern = \"a\"\nsize = 0\nttl_secs = 1",
            "[[history]]\npattern = \"a\"\nsize = 1\nttl_secs = 0",
            "[[history]]\npattern = \"a*b\"\nsize = 1\nttl_secs = 1",
            "[[history]]\npattern = \"a\"\nsize = 1",
            "history_pos_key = \"a b\"",
            "history_max_replay = 3000\n[[history]]\npattern = \"a\"\nsize = 1\nttl_secs = 1",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origin_check() {
        let c = Config::from_toml(
            "check_origin = [\"https://app.example.com\", \"//*.corecast.io\", \"//localhost\"]",
        )
        .unwrap();
        assert!(c.origin_allowed(None), "non-browser clients send no Origin");
        assert!(c.origin_allowed(Some("https://app.example.com")));
        assert!(!c.origin_allowed(Some("http://app.example.com")));
        assert!(c.origin_allowed(Some("https://x.corecast.io")));
        assert!(c.origin_allowed(Some("https://corecast.io")));
        assert!(!c.origin_allowed(Some("https://evilcorecast.io")));
        assert!(c.origin_allowed(Some("http://localhost:3000")));
        assert!(!c.origin_allowed(Some("https://evil.com")));
        assert!(Config::default().origin_allowed(Some("https://anything")));
    }

    #[test]
    fn api_origins_allow_none_unless_listed() {
        assert!(!Config::default().api_origin_allowed("http://127.0.0.1:4000"));
        assert!(!Config::default().api_origin_allowed("null"));
        let c = Config::from_toml("api_origins = [\"https://admin.example.com\", \"//*.ops.io\"]")
            .unwrap();
        assert!(c.api_origin_allowed("https://admin.example.com"));
        assert!(c.api_origin_allowed("https://a.ops.io"));
        assert!(!c.api_origin_allowed("https://evil.com"));
        assert!(!c.api_origin_allowed("http://admin.example.com"));
        // check_origin (sockets) is a separate list.
        assert!(c.origin_allowed(Some("https://evil.com")));
    }

    #[test]
    fn a_cluster_section_is_read_and_checked() {
        assert_eq!(
            Config::from_toml("").unwrap().cluster,
            None,
            "one node by default"
        );
        let c = Config::from_toml(
            "[cluster]\nnats_url = [\"nats://a:4222\", \"nats://b:4222\"]\nnode = \"ws-1\"\n",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(c.nats_url, ["nats://a:4222", "nats://b:4222"]);
        assert_eq!(
            (c.node.as_deref(), c.presence_heartbeat_ms),
            (Some("ws-1"), 1500)
        );
        for bad in [
            "[cluster]\nnats_url = []",
            "[cluster]\nsubject_prefix = \"a.b\"",
            "[cluster]\nuser = \"u\"",
            "[cluster]\ndown_period_ms = 100\npresence_heartbeat_ms = 200",
            "[cluster]\nnope = 1",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn invalid_values_are_rejected() {
        assert!(
            Config::from_toml("max_request_body = 100\nmax_body_bytes_in_flight = 99").is_err()
        );
        assert!(
            Config::from_toml("max_request_body = 100\nmax_body_bytes_in_flight = 100").is_ok()
        );
        assert!(Config::from_toml("api_key = \"\"").is_err());
        assert!(Config::from_toml("metrics_key = \"\"").is_err());
        assert!(Config::from_toml("require_token = true").is_err());
        assert!(Config::from_toml("max_broadcast_batch = 0").is_err());
        let off = Config::from_toml("http_keepalive_ms = 0").unwrap();
        assert_eq!(off.http_keepalive(), None);
        assert_eq!(
            Config::default().http_keepalive(),
            Some(Duration::from_secs(5))
        );
        assert!(Config::from_toml("max_frame = 0").is_err());
        assert!(Config::from_toml("backlog = 0").is_err());
        for bad in [0, 8, 1000, 1 << 17] {
            assert!(
                Config::from_toml(&format!("ring_entries = {bad}")).is_err(),
                "{bad}"
            );
        }
        assert!(Config::from_toml("mesh_outbox = 1000").is_err());
        assert!(Config::from_toml("mesh_outbox_bytes = 1048576").is_err());
        assert!(Config::from_toml("mesh_outbox_bytes = 3145728").is_ok());
        assert!(
            Config::from_toml("mesh_outbox_bytes = 3145728\nmax_message = 4194304").is_err(),
            "the bound must grow with the largest message"
        );
        assert!(Config::from_toml("message_timeout_ms = 0").is_err());
        assert!(Config::from_toml("token_max_age_secs = 0").is_err());
        // Tokens and hooks (issue 15).
        assert!(Config::from_toml("jwt_algorithm = \"none\"").is_err());
        assert!(Config::from_toml("jwt_algorithm = \"RS512\"").is_err());
        assert!(Config::from_toml("jwt_leeway_secs = 3601").is_err());
        assert!(Config::from_toml("require_token = true\njwks_file = \"/k.json\"").is_ok());
        assert!(Config::from_toml("[hooks]\njoin_url = \"https://b/join\"").is_err());
        assert!(Config::from_toml("[hooks]\njoin_url = \"http://\"").is_err());
        assert!(Config::from_toml("[hooks]\ntimeout_ms = 0").is_err());
        assert!(Config::from_toml("[hooks]\nmax_in_flight_per_core = 0").is_err());
        assert!(Config::from_toml("[hooks]\ncircuit_failures = 0").is_err());
        assert!(Config::from_toml("[hooks]\nmax_answer_bytes = 10").is_err());
        assert!(Config::from_toml("[hooks]\njoin_topics = [\"a*b\"]").is_err());
        assert!(Config::from_toml("[hooks]\nbogus = 1").is_err());
        let h = Config::from_toml("[hooks]\njoin_url = \"http://127.0.0.1:9/j\"").unwrap();
        assert_eq!(h.hooks.unwrap().timeout_ms, 2_000);
        assert!(Config::from_toml("max_messages_per_sec = 1000001").is_err());
        assert!(Config::from_toml("max_messages_per_sec = 0").is_ok());
        // The partial-message budget must hold one largest message (frame + message + header).
        let least = (2 << 20) + 14;
        let budget = |b: usize| Config::from_toml(&format!("max_partial_bytes_per_core = {b}"));
        assert!(budget(least).is_ok());
        assert!(budget(least - 1).is_err());
        let small = "max_frame = 1000\nmax_message = 1000\nmax_partial_bytes_per_core = 2014";
        assert!(Config::from_toml(small).is_ok());
        for good in [16, 4096, 65536] {
            assert!(
                Config::from_toml(&format!("ring_entries = {good}")).is_ok(),
                "{good}"
            );
        }
    }
}
