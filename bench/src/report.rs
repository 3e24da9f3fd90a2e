//! Report output: the directory (`summary.json`, `.hgrm` files, `latency.png`) and the short
//! human table printed at the end of a scenario and by `corecast-bench table`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use crate::cli::Common;
use crate::hist::{self, Hist};
use crate::probe::{self, Machine, Sample};

/// What every summary starts with.
#[derive(Debug, Clone, Serialize)]
pub struct Header {
    pub scenario: &'static str,
    /// Display name of this run (defaults to the scenario).
    pub label: String,
    pub tool: String,
    pub command: Vec<String>,
    pub machine: Machine,
    pub server: ServerInfo,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub url: String,
    pub version: Option<String>,
    pub commit: Option<String>,
    pub pid: Option<u32>,
}

impl Header {
    pub fn new(scenario: &'static str, c: &Common) -> Header {
        Header {
            scenario,
            label: c.label.clone().unwrap_or_else(|| scenario.to_string()),
            tool: format!("corecast-bench {}", env!("CARGO_PKG_VERSION")),
            command: std::env::args().collect(),
            machine: probe::machine(),
            server: ServerInfo {
                url: c.url.clone(),
                version: c.server_version.clone(),
                commit: c.server_commit.clone(),
                pid: c.server_pid,
            },
        }
    }
}

/// Server counters that moved between two samples (`*_total` series only).
pub fn counter_delta(before: &Sample, after: &Sample) -> BTreeMap<String, f64> {
    after
        .metrics
        .iter()
        .filter(|(k, _)| k.contains("_total"))
        .filter_map(|(k, v)| {
            let d = v - before.metrics.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

/// Machine-wide kernel TCP counters that moved between two samples.
pub fn kernel_delta(before: &Sample, after: &Sample) -> BTreeMap<String, i64> {
    after
        .kernel
        .iter()
        .filter_map(|(k, v)| {
            let d = *v as i64 - before.kernel.get(k).copied().unwrap_or(0) as i64;
            (d != 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// `(after - before) / n`, when both are known and n > 0.
pub fn per_conn(before: Option<u64>, after: Option<u64>, n: u64) -> Option<f64> {
    match (before, after) {
        (Some(b), Some(a)) if n > 0 => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    }
}

/// Write summary.json, one .hgrm per histogram, and latency.png into `dir`.
pub fn write(
    dir: &Path,
    summary: &Value,
    hists: &[(&str, &str, &Hist)],
    font: &Path,
    title: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(summary)?;
    std::fs::write(dir.join("summary.json"), json + "\n")?;
    for (stem, _, h) in hists.iter().filter(|(_, _, h)| !h.is_empty()) {
        let path = dir.join(format!("{stem}.hgrm"));
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        hist::write_hgrm(&mut f, h).with_context(|| format!("writing {}", path.display()))?;
    }
    let series: Vec<(&str, &Hist)> = hists.iter().map(|(_, l, h)| (*l, *h)).collect();
    let png = dir.join("latency.png");
    if let Err(e) = crate::plot::percentile_plot(&png, font, title, &series) {
        eprintln!("corecast-bench: no plot: {e:#}");
    }
    eprintln!("corecast-bench: report in {}", dir.display());
    Ok(())
}

fn num(v: &Value, ptr: &str) -> Option<f64> {
    v.pointer(ptr).and_then(Value::as_f64)
}

fn fmt_num(x: Option<f64>, digits: usize) -> String {
    x.map_or_else(|| "n/a".into(), |x| format!("{x:.digits$}"))
}

fn fmt_bytes(x: Option<f64>) -> String {
    match x {
        None => "n/a".into(),
        Some(b) if b.abs() >= 10_240.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) => format!("{b:.0} B"),
    }
}

fn latency(v: &Value, key: &str, cols: &[&str]) -> String {
    cols.iter()
        .map(|k| fmt_num(num(v, &format!("/results/{key}/{k}")), 2))
        .collect::<Vec<_>>()
        .join(" / ")
        + " ms"
}

/// The rows of one summary: (scenario, metric, value).
pub fn rows(v: &Value) -> Vec<(String, String, String)> {
    let sc = v["scenario"].as_str().unwrap_or("?");
    let name = v["label"].as_str().unwrap_or(sc).to_string();
    let mut out = Vec::new();
    let mut row = |m: &str, val: String| out.push((name.clone(), m.to_string(), val));
    match sc {
        "connect" => {
            let n = num(v, "/memory/connections");
            row(
                "connections joined / asked (failed)",
                format!(
                    "{} / {} ({})",
                    fmt_num(num(v, "/results/joined"), 0),
                    fmt_num(num(v, "/params/connections"), 0),
                    fmt_num(num(v, "/results/failed"), 0)
                ),
            );
            row(
                "server RSS per idle joined conn (user space)",
                format!(
                    "{}  (RSS delta over {} conns)",
                    fmt_bytes(num(v, "/memory/rss_per_connection_bytes")),
                    fmt_num(n, 0)
                ),
            );
            row(
                "kernel Slab per conn (both loopback ends)",
                format!(
                    "{}  (SUnreclaim {}; TCP buffers {})",
                    fmt_bytes(num(v, "/memory/slab_per_connection_bytes")),
                    fmt_bytes(num(v, "/memory/sunreclaim_per_connection_bytes")),
                    fmt_bytes(num(v, "/memory/tcp_mem_per_connection_bytes"))
                ),
            );
            row(
                "connect rate (achieved / asked)",
                format!(
                    "{} / {} per s",
                    fmt_num(num(v, "/results/connect_rate_per_sec"), 0),
                    fmt_num(num(v, "/params/rate"), 0)
                ),
            );
            let cols = ["p50_ms", "p99_ms", "max_ms"];
            row(
                "connect+join p50 / p99 / max",
                latency(v, "connect_join_latency", &cols),
            );
        }
        "broadcast" => {
            row(
                "subscribers / topics / publishers (via)",
                format!(
                    "{} / {} / {} ({})",
                    fmt_num(num(v, "/results/subscribers_joined"), 0),
                    fmt_num(num(v, "/params/topics"), 0),
                    fmt_num(num(v, "/params/publishers"), 0),
                    v.pointer("/params/via")
                        .and_then(Value::as_str)
                        .unwrap_or("?")
                ),
            );
            row(
                "messages/s sent (asked)",
                format!(
                    "{} ({})",
                    fmt_num(num(v, "/results/achieved_rate"), 1),
                    fmt_num(num(v, "/params/rate"), 0)
                ),
            );
            row(
                "deliveries/s",
                fmt_num(num(v, "/results/deliveries_per_sec"), 0),
            );
            let cols = ["p50_ms", "p99_ms", "p99_9_ms", "max_ms"];
            row(
                "delivery p50 / p99 / p99.9 / max",
                latency(v, "delivery_latency", &cols),
            );
            if let (Some(a), Some(b)) = (
                num(v, "/results/delivery_latency_same_core/p50_ms"),
                num(v, "/results/delivery_latency_cross_core/p50_ms"),
            ) {
                row(
                    "delivery p50 same core / across cores",
                    format!("{a:.2} / {b:.2} ms"),
                );
            }
            row(
                "delivered / expected, lost, duplicated",
                format!(
                    "{} / {}, {}, {}",
                    fmt_num(num(v, "/results/accounting/delivered"), 0),
                    fmt_num(num(v, "/results/accounting/expected"), 0),
                    fmt_num(num(v, "/results/accounting/lost"), 0),
                    fmt_num(num(v, "/results/accounting/duplicated"), 0)
                ),
            );
            if let Some(r) = num(v, "/results/reordered").filter(|r| *r > 0.0) {
                row(
                    "reordered (per publisher and topic)",
                    format!("{r:.0} of the delivered"),
                );
            }
            if v.pointer("/results/queue_bound_hit") == Some(&Value::Bool(true)) {
                row("queue bound hit (1013 closes)", "yes".into());
            }
        }
        _ => {}
    }
    out
}

/// Render rows as an aligned text table.
pub fn render(rows: &[(String, String, String)]) -> String {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(8);
    let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "{:w0$}  {:w1$}  value", "scenario", "metric");
    let _ = writeln!(s, "{}", "-".repeat(w0 + w1 + 30));
    for (a, b, c) in rows {
        let _ = writeln!(s, "{a:w0$}  {b:w1$}  {c}");
    }
    s
}

/// Print the table of one summary (end of a scenario).
pub fn print_summary(v: &Value) {
    println!("\n{}", render(&rows(v)));
}

/// `corecast-bench table DIR...`: every summary.json in the dirs or one level below.
pub fn table(dirs: &[PathBuf]) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for d in dirs {
        let direct = d.join("summary.json");
        if direct.is_file() {
            files.push(direct);
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(d)
            .with_context(|| format!("reading {}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path().join("summary.json")))
            .filter(|p| p.is_file())
            .collect();
        subs.sort();
        files.extend(subs);
    }
    anyhow::ensure!(!files.is_empty(), "no summary.json found");
    let mut all = Vec::new();
    let mut first: Option<Value> = None;
    for f in &files {
        let text = std::fs::read_to_string(f)?;
        let v: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        all.extend(rows(&v));
        first.get_or_insert(v);
    }
    if let Some(v) = first {
        let m = &v["machine"];
        println!(
            "corecast bench, {}: {} ({} cores), kernel {}, server: {} {}",
            m["timestamp_utc"].as_str().unwrap_or("?"),
            m["cpu_model"].as_str().unwrap_or("?"),
            m["cores"],
            m["kernel"].as_str().unwrap_or("?"),
            v.pointer("/server/version")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            v.pointer("/server/commit")
                .and_then(Value::as_str)
                .unwrap_or("")
        );
    }
    print!("{}", render(&all));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_figures() {
        assert_eq!(per_conn(Some(1_000), Some(3_000), 1_000), Some(2.0));
        assert_eq!(per_conn(Some(3_000), Some(1_000), 1_000), Some(-2.0));
        assert_eq!(per_conn(None, Some(1), 1), None);
        assert_eq!(per_conn(Some(1), Some(2), 0), None);
    }

    #[test]
    fn table_rows_from_a_summary() {
        let v = serde_json::json!({
            "scenario": "broadcast", "label": "fanout",
            "params": {"topics": 1, "publishers": 1, "via": "api", "rate": 50},
            "results": {"subscribers_joined": 10, "achieved_rate": 50.0, "deliveries_per_sec": 500.0,
                "delivery_latency": {"p50_ms": 1.0, "p99_ms": 2.0, "p99_9_ms": 3.0, "max_ms": 4.0},
                "accounting": {"delivered": 5000, "expected": 5000, "lost": 0, "duplicated": 0}}
        });
        let r = rows(&v);
        assert!(r.iter().all(|(s, _, _)| s == "fanout"));
        let text = render(&r);
        assert!(text.contains("1.00 / 2.00 / 3.00 / 4.00 ms"), "{text}");
        assert!(text.contains("5000 / 5000, 0, 0"), "{text}");
    }
}
