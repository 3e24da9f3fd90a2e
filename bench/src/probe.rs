//! What we read about the server and the machine: the server's RSS (its `/metrics` or
//! /proc/PID/status), its counters, the kernel's slab and socket memory, and machine facts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cli::Target;
use crate::http;

/// One look at the server and the kernel.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Sample {
    /// Unix nanoseconds when taken.
    pub at_ns: u64,
    /// Server resident set size, bytes (None if it could not be read).
    pub server_rss_bytes: Option<u64>,
    /// `proc` or `metrics`.
    pub rss_source: String,
    /// /proc/meminfo `Slab:` in bytes.
    pub slab_bytes: Option<u64>,
    /// /proc/meminfo `SUnreclaim:` in bytes.
    pub sunreclaim_bytes: Option<u64>,
    /// /proc/net/sockstat `TCP: mem` (pages of socket buffers), in bytes.
    pub tcp_mem_bytes: Option<u64>,
    /// /proc/net/sockstat `TCP: inuse`.
    pub tcp_inuse: Option<u64>,
    /// /proc/net/sockstat `TCP: tw`.
    pub tcp_tw: Option<u64>,
    /// The server's counters (summed over cores; close codes kept apart), if it has /metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Machine-wide TCP counters (/proc/net/snmp `Tcp:`, /proc/net/netstat `TcpExt:`).
    pub kernel: BTreeMap<String, u64>,
}

/// The kernel TCP counters worth a look after a load run (listen queue overflows, SYN
/// retransmits, resets).
const KERNEL_COUNTERS: &[&str] = &[
    "Tcp.ActiveOpens",
    "Tcp.PassiveOpens",
    "Tcp.AttemptFails",
    "Tcp.EstabResets",
    "Tcp.RetransSegs",
    "Tcp.OutRsts",
    "TcpExt.ListenOverflows",
    "TcpExt.ListenDrops",
    "TcpExt.TCPReqQFullDrop",
    "TcpExt.TCPReqQFullDoCookies",
    "TcpExt.SyncookiesSent",
    "TcpExt.TCPSynRetrans",
    "TcpExt.TCPTimeouts",
    "TcpExt.TCPBacklogDrop",
    "TcpExt.TCPAbortOnData",
    "TcpExt.TCPAbortOnClose",
    "TcpExt.TCPAbortOnMemory",
    "TcpExt.TW",
];

/// How to find the server's memory.
#[derive(Debug, Clone)]
pub struct Prober {
    pub target: Target,
    pub server_pid: Option<u32>,
    pub use_metrics: bool,
}

impl Prober {
    /// The prober the command-line options ask for (`--server-pid`, `--no-metrics`).
    pub fn from_options(target: Target, c: &crate::cli::Common) -> Prober {
        Prober {
            target,
            server_pid: c.server_pid,
            use_metrics: !c.no_metrics,
        }
    }

    pub async fn sample(&self) -> Sample {
        let mut s = Sample {
            at_ns: crate::proto::now_ns(),
            ..Sample::default()
        };
        if self.use_metrics {
            match fetch_metrics(&self.target).await {
                Ok(m) => s.metrics = m,
                Err(e) => eprintln!("corecast-bench: /metrics: {e:#}"),
            }
        }
        if let Some(pid) = self.server_pid {
            s.server_rss_bytes = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|t| status_rss(&t));
            s.rss_source = "proc".into();
        } else if let Some(v) = s.metrics.get("corecast_rss_bytes") {
            s.server_rss_bytes = Some(*v as u64);
            s.rss_source = "metrics".into();
        }
        if let Ok(t) = std::fs::read_to_string("/proc/meminfo") {
            let m = meminfo(&t);
            s.slab_bytes = m.get("Slab").copied();
            s.sunreclaim_bytes = m.get("SUnreclaim").copied();
        }
        for file in ["/proc/net/snmp", "/proc/net/netstat"] {
            if let Ok(t) = std::fs::read_to_string(file) {
                let all = snmp_pairs(&t);
                for k in KERNEL_COUNTERS {
                    if let Some(v) = all.get(*k) {
                        s.kernel.insert((*k).to_string(), *v);
                    }
                }
            }
        }
        if let Ok(t) = std::fs::read_to_string("/proc/net/sockstat") {
            let tcp = sockstat_tcp(&t);
            s.tcp_mem_bytes = tcp.get("mem").map(|p| p * page_size());
            s.tcp_inuse = tcp.get("inuse").copied();
            s.tcp_tw = tcp.get("tw").copied();
        }
        s
    }
}

async fn fetch_metrics(target: &Target) -> anyhow::Result<BTreeMap<String, f64>> {
    let (code, body) =
        http::request(target.addr, "GET", "/metrics", None, Duration::from_secs(5)).await?;
    if code != 200 {
        anyhow::bail!("status {code}");
    }
    Ok(parse_metrics(&String::from_utf8_lossy(&body)))
}

/// Prometheus text -> `name` (summed over its label sets) or `name{code="N"}` for series with a
/// `code` label.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        let code = labels
            .split(',')
            .find_map(|kv| kv.strip_prefix("code="))
            .map(|c| c.trim_matches('"'));
        let key = match code {
            Some(c) => format!("{name}{{code=\"{c}\"}}"),
            None => name.to_string(),
        };
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// /proc/net/snmp and /proc/net/netstat: a line of names then a line of values per prefix;
/// returns `Prefix.Name` -> value.
pub fn snmp_pairs(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (Some((p1, names)), Some((p2, values))) =
            (names.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{p1}.{n}"), v);
            }
        }
    }
    out
}

/// `VmRSS:` of a /proc/PID/status text, in bytes.
pub fn status_rss(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// /proc/meminfo -> field name -> bytes.
pub fn meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let mut it = v.split_whitespace();
            let n: u64 = it.next()?.parse().ok()?;
            let mult = if it.next() == Some("kB") { 1024 } else { 1 };
            Some((k.to_string(), n * mult))
        })
        .collect()
}

/// The `TCP:` line of /proc/net/sockstat as key -> value.
pub fn sockstat_tcp(text: &str) -> BTreeMap<String, u64> {
    let Some(line) = text.lines().find(|l| l.starts_with("TCP:")) else {
        return BTreeMap::new();
    };
    let words: Vec<&str> = line.split_whitespace().skip(1).collect();
    words
        .chunks(2)
        .filter_map(|kv| Some((kv.first()?.to_string(), kv.get(1)?.parse().ok()?)))
        .collect()
}

fn page_size() -> u64 {
    4096
}

/// This process's own RSS, bytes.
pub fn self_rss() -> Option<u64> {
    status_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Facts about the machine a result was measured on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cores: usize,
    pub mem_total_bytes: u64,
    pub nofile_limit: u64,
    pub timestamp_unix: u64,
    pub timestamp_utc: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_string());
    let secs = crate::proto::now_ns() / 1_000_000_000;
    Machine {
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        mem_total_bytes: meminfo(&read("/proc/meminfo"))
            .get("MemTotal")
            .copied()
            .unwrap_or(0),
        nofile_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft),
        timestamp_unix: secs,
        timestamp_utc: utc(secs),
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for unix seconds (civil-from-days, proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_cores_and_keep_codes() {
        let text = "# HELP x\ncorecast_connections{core=\"0\"} 3\ncorecast_connections{core=\"1\"} 4\n\
                    corecast_closes_total{core=\"0\",code=\"1013\"} 2\ncorecast_closes_total{core=\"1\",code=\"1013\"} 1\n\
                    corecast_rss_bytes 12345\ngarbage\n";
        let m = parse_metrics(text);
        assert_eq!(m["corecast_connections"], 7.0);
        assert_eq!(m["corecast_closes_total{code=\"1013\"}"], 3.0);
        assert_eq!(m["corecast_rss_bytes"], 12345.0);
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn proc_files() {
        assert_eq!(
            status_rss("Name:\tx\nVmRSS:\t  1024 kB\n"),
            Some(1024 * 1024)
        );
        assert_eq!(status_rss("Name: x\n"), None);
        let m = meminfo("MemTotal:  100 kB\nSlab:   20 kB\nHugePages_Total: 0\n");
        assert_eq!((m["Slab"], m["HugePages_Total"]), (20 * 1024, 0));
        let t = sockstat_tcp(
            "sockets: used 5\nTCP: inuse 3 orphan 0 tw 7 alloc 4 mem 2\nUDP: inuse 0\n",
        );
        assert_eq!((t["inuse"], t["tw"], t["mem"]), (3, 7, 2));
    }

    #[test]
    fn snmp_files() {
        let t = "Tcp: RtoAlgorithm RetransSegs\nTcp: 1 42\nUdp: InDatagrams\nUdp: 7\n";
        let m = snmp_pairs(t);
        assert_eq!(m["Tcp.RetransSegs"], 42);
        assert_eq!(m["Udp.InDatagrams"], 7);
        assert_eq!(snmp_pairs("Tcp: A\nUdp: 1\n").len(), 0);
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_763_900_000), "2025-11-23T12:13:20Z");
    }
}
