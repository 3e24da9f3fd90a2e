//! Command line: the scenarios, their options, and the small parsers behind them.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// corecast-bench: load generator for corecast (and any Phoenix Channels V2 server).
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Cli {
    /// Internal: run as a worker process (spec on the first stdin line, events on stdout).
    #[arg(long, hide = true)]
    pub worker: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Open N connections at a given rate, join each to one of T topics, hold them, and report
    /// connect+join latency, failures and server/kernel memory per connection.
    Connect(ConnectArgs),
    /// N subscribers over T topics, P publishers at R msgs/s total: delivery latency,
    /// deliveries per second, lost and duplicated messages.
    Broadcast(BroadcastArgs),
    /// A presence join storm, one process's share: N sockets join one presence topic as fast as
    /// they can, each tracks the presence state it is sent, and the process prints one JSON
    /// line when every socket's view holds all `--expect-keys` keys (or the wait is over), and
    /// another when it has closed its sockets. `scripts/bench_presence.py` runs several.
    Presence(PresenceArgs),
    /// Print the summary table of one or more report directories (searched one level deep).
    Table {
        /// Report directories (each holding summary.json, or sub-directories that do).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

/// Options every scenario shares: where the server is, how clients are spread, where reports go.
#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Phoenix V2 socket URL.
    #[arg(
        long,
        env = "BENCH_URL",
        default_value = "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"
    )]
    pub url: String,
    /// Source addresses for client sockets: ranges and lists, e.g. `127.0.0.2-127.0.0.250` or
    /// `127.0.0.2,127.0.0.3`. Connections take them in turn.
    #[arg(long, default_value = "127.0.0.1")]
    pub source_ips: String,
    /// Worker processes holding the client sockets (raised as needed to respect --per-process).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Most client sockets one worker process may hold (stay under its descriptor limit).
    #[arg(long, default_value_t = 18_000)]
    pub per_process: usize,
    /// Write .hgrm files, summary.json and latency.png here.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Read the server's RSS from /proc/PID/status (VmRSS) instead of its /metrics.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// The server has no /metrics endpoint (peers): skip it.
    #[arg(long)]
    pub no_metrics: bool,
    /// Topic names are PREFIX0, PREFIX1, ...
    #[arg(long, default_value = "bench:")]
    pub topic_prefix: String,
    /// Seconds between heartbeats on every socket (phoenix.js: 30).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Bound on one connection's connect + upgrade + join, in milliseconds.
    #[arg(long, default_value_t = 15_000)]
    pub connect_timeout_ms: u64,
    /// Connection attempts in flight at once (across all workers).
    #[arg(long, default_value_t = 2_000)]
    pub max_inflight: usize,
    /// Server version recorded in summary.json (e.g. the output of `corecast --version`).
    #[arg(long, env = "BENCH_SERVER_VERSION")]
    pub server_version: Option<String>,
    /// Server commit recorded in summary.json.
    #[arg(long, env = "BENCH_SERVER_COMMIT")]
    pub server_commit: Option<String>,
    /// Name of this run in tables and the plot title (default: the scenario).
    #[arg(long)]
    pub label: Option<String>,
    /// TTF font for the PNG's text.
    #[arg(
        long,
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    pub font: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    pub common: Common,
    /// Connections to open.
    #[arg(short = 'n', long, default_value_t = 1_000)]
    pub connections: usize,
    /// Connection attempts started per second (all workers together).
    #[arg(long, default_value_t = 1_000.0)]
    pub rate: f64,
    /// Topics; connection i joins topic i mod T.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 10)]
    pub hold_secs: u64,
    /// Seconds to wait after the ramp before sampling memory.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct PresenceArgs {
    /// Phoenix V2 socket URL.
    #[arg(
        long,
        env = "BENCH_URL",
        default_value = "ws://127.0.0.1:4000/socket/websocket?vsn=2.0.0"
    )]
    pub url: String,
    /// Sockets this process opens.
    #[arg(short = 'n', long, default_value_t = 1_000)]
    pub sockets: usize,
    /// Source addresses (as for the other scenarios); socket k binds address
    /// (first + k) mod len.
    #[arg(long, default_value = "127.0.0.1")]
    pub source_ips: String,
    /// Global index of this process's first socket (for the source addresses and the labels).
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// This process's index in the run (only echoed in its output).
    #[arg(long, default_value_t = 0)]
    pub index: usize,
    /// The topic every socket joins.
    #[arg(long, default_value = "room:storm")]
    pub topic: String,
    /// Presence keys a full view holds (all processes' sockets; default: this process's).
    #[arg(long)]
    pub expect_keys: Option<usize>,
    /// The storm's common start, unix nanoseconds (CLOCK_REALTIME): the process waits for it,
    /// then opens its sockets; every time it reports is measured from it. 0: now.
    #[arg(long, default_value_t = 0)]
    pub start_at_ns: u64,
    /// Connection attempts of this process in flight at once (no rate: as fast as allowed).
    #[arg(long, default_value_t = 500)]
    pub max_inflight: usize,
    /// Bound on one socket's connect + upgrade + join reply, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub connect_timeout_ms: u64,
    /// Stop waiting for every view to be full this many seconds after the start.
    #[arg(long, default_value_t = 120)]
    pub agree_timeout_secs: u64,
    /// After the first line, hold the sockets until stdin has a line or closes, at most this
    /// many seconds.
    #[arg(long, default_value_t = 300)]
    pub hold_secs: u64,
    /// Seconds between heartbeats on every socket (phoenix.js: 30).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// The topic is not a presence topic: only join, expect no presence messages (the socket
    /// cost baseline); the first line comes once every socket has joined or failed.
    #[arg(long)]
    pub plain: bool,
    /// Parse every presence_diff and presence_state on its socket. By default a process
    /// parses each distinct payload text once (every member of a topic is sent the same diff
    /// bytes, and the joiners a core answers between two diffs the same state bytes) and
    /// applies the parsed payload to each socket's own view, so the generator's CPU stays off
    /// the measured path as far as it can.
    #[arg(long)]
    pub no_parse_cache: bool,
}

/// How publishers reach the server.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// A publisher socket joins its topics and pushes event "bench" (the sender gets a copy).
    Socket,
    /// `POST /api/broadcast`, one HTTP request per message.
    Api,
}

#[derive(Args, Debug, Clone)]
pub struct BroadcastArgs {
    #[command(flatten)]
    pub common: Common,
    /// Subscriber connections; subscriber i joins topic i mod T.
    #[arg(short = 'n', long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Topics.
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Publishers.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per second, all publishers together. A socket publisher sends rate/publishers
    /// a second: corecast closes a socket over its `max_messages_per_sec` (default 200) with
    /// 1008, so add publishers rather than push one socket past it.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How publishers send.
    #[arg(long, value_enum, default_value_t = Via::Socket)]
    pub via: Via,
    /// Subscriber connections started per second while ramping.
    #[arg(long, default_value_t = 2_000.0)]
    pub connect_rate: f64,
    /// Seconds of publishing before measuring (not counted).
    #[arg(long, default_value_t = 2)]
    pub warmup_secs: u64,
    /// Seconds of measured publishing.
    #[arg(long, default_value_t = 10)]
    pub measure_secs: u64,
    /// At most this many seconds after the last send to collect in-flight deliveries.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Extra payload bytes (a padding string) per message.
    #[arg(long, default_value_t = 0)]
    pub payload_bytes: usize,
    /// Where the publishers connect (default: --url), e.g. one node of a cluster.
    #[arg(long, value_name = "URL")]
    pub publish_url: Option<String>,
    /// Where the subscribers connect (default: --url): comma-separated or repeated; worker
    /// process w takes URL w mod K (workers are raised to at least K), and the results get one
    /// `by_subscriber_url` entry per URL (latency, lost, duplicated), e.g. one per cluster node.
    #[arg(long, value_name = "URL", value_delimiter = ',')]
    pub subscriber_url: Vec<String>,
}

/// The URL of each of `workers` worker processes: URL w mod K of `urls` (or `default`).
pub fn worker_urls(workers: usize, urls: &[String], default: &str) -> Vec<String> {
    (0..workers)
        .map(|w| match urls.len() {
            0 => default.to_string(),
            k => urls[w % k].clone(),
        })
        .collect()
}

/// Where the server is: the TCP address to connect to, and the URL to ask for.
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub url: String,
}

impl Target {
    pub fn from_url(url: &str) -> anyhow::Result<Target> {
        let rest = url
            .strip_prefix("ws://")
            .context("only ws:// URLs are supported")?;
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(h, _)| !h.ends_with(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .with_context(|| format!("resolving {with_port}"))?
            .find(SocketAddr::is_ipv4)
            .with_context(|| format!("{with_port} has no IPv4 address"))?;
        Ok(Target {
            addr,
            url: url.to_string(),
        })
    }
}

/// Parse `127.0.0.2-127.0.0.250,127.0.1.1` into the addresses it names, in order.
pub fn parse_source_ips(spec: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: Ipv4Addr = a
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address {a:?}"))?;
                let b: Ipv4Addr = b
                    .trim()
                    .parse()
                    .with_context(|| format!("bad address {b:?}"))?;
                let (lo, hi) = (u32::from(a), u32::from(b));
                if lo > hi {
                    bail!("empty range {part:?}");
                }
                if hi - lo >= 1 << 20 {
                    bail!("range {part:?} is too large");
                }
                out.extend((lo..=hi).map(Ipv4Addr::from));
            }
            None => out.push(
                part.parse()
                    .with_context(|| format!("bad address {part:?}"))?,
            ),
        }
    }
    if out.is_empty() {
        bail!("no source address in {spec:?}");
    }
    Ok(out)
}

/// Split `n` items over `parts` contiguous ranges `(start, count)` whose sizes differ by at most one.
pub fn split(n: usize, parts: usize) -> Vec<(usize, usize)> {
    let parts = parts.max(1);
    let (base, extra) = (n / parts, n % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let count = base + usize::from(i < extra);
            let r = (start, count);
            start += count;
            r
        })
        .collect()
}

/// Worker processes needed for `n` sockets: at least `asked`, and enough that none holds more
/// than `per_process`.
pub fn workers_needed(n: usize, asked: usize, per_process: usize) -> usize {
    asked.max(n.div_ceil(per_process.max(1))).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ip_ranges_and_lists() {
        let ips = parse_source_ips("127.0.0.2-127.0.0.4, 127.0.1.1").unwrap();
        let want: Vec<Ipv4Addr> = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.1.1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(ips, want);
        assert_eq!(
            parse_source_ips("127.0.0.2-127.0.0.250").unwrap().len(),
            249
        );
        // A range may cross an octet boundary.
        let ips = parse_source_ips("127.0.0.255-127.0.1.0").unwrap();
        assert_eq!(ips.len(), 2);
        assert!(parse_source_ips("127.0.0.5-127.0.0.4").is_err());
        assert!(parse_source_ips("").is_err());
        assert!(parse_source_ips("127.0.0.300").is_err());
        assert!(parse_source_ips("1.0.0.0-2.0.0.0").is_err());
    }

    #[test]
    fn split_is_even_and_contiguous() {
        assert_eq!(split(10, 3), vec![(0, 4), (4, 3), (7, 3)]);
        assert_eq!(split(2, 4), vec![(0, 1), (1, 1), (2, 0), (2, 0)]);
        assert_eq!(split(5, 0), vec![(0, 5)]);
    }

    #[test]
    fn workers_respect_the_per_process_bound() {
        assert_eq!(workers_needed(19_000, 2, 18_000), 2);
        assert_eq!(workers_needed(40_000, 1, 18_000), 3);
        assert_eq!(workers_needed(0, 0, 18_000), 1);
    }

    #[test]
    fn worker_urls_take_turns() {
        let urls = vec!["ws://a".to_string(), "ws://b".to_string()];
        assert_eq!(
            worker_urls(3, &urls, "ws://d"),
            ["ws://a", "ws://b", "ws://a"]
        );
        assert_eq!(worker_urls(2, &[], "ws://d"), ["ws://d", "ws://d"]);
    }

    #[test]
    fn target_from_url() {
        let t = Target::from_url("ws://127.0.0.1:4001/socket/websocket?vsn=2.0.0").unwrap();
        assert_eq!(t.addr, "127.0.0.1:4001".parse().unwrap());
        let t = Target::from_url("ws://127.0.0.1/socket").unwrap();
        assert_eq!(t.addr.port(), 80);
        assert!(Target::from_url("http://127.0.0.1:1/").is_err());
    }
}
