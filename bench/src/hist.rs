//! Latency histograms: recording in microseconds, moving them between processes (V2
//! serialisation, base64), merging, percentiles, and the `.hgrm` percentile text format.

use std::io::Write;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

pub type Hist = Histogram<u64>;

/// Highest latency tracked: 120 s in microseconds (higher values are clamped to it).
const MAX_US: u64 = 120_000_000;

/// An empty latency histogram: 1 us .. 120 s, 3 significant digits.
pub fn new_latency() -> Hist {
    // The bounds are constants that satisfy the crate's rules (low >= 1, high >= 2 * low,
    // sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, MAX_US, 3).unwrap_or_else(|_| unreachable!())
}

/// Record a duration given in nanoseconds.
pub fn record_ns(h: &mut Hist, ns: u64) {
    h.saturating_record((ns / 1_000).max(1));
}

pub fn to_b64(h: &Hist) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serialising histogram: {e:?}"))?;
    Ok(B64.encode(buf))
}

pub fn from_b64(s: &str) -> anyhow::Result<Hist> {
    let bytes = B64.decode(s).context("histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("deserialising histogram: {e:?}"))
}

/// Merge serialised histograms into one latency histogram.
pub fn merge_b64<'a>(parts: impl IntoIterator<Item = &'a str>) -> anyhow::Result<Hist> {
    let mut total = new_latency();
    for p in parts {
        let h = from_b64(p)?;
        total
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
    }
    Ok(total)
}

/// The usual percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
}

pub fn percentiles(h: &Hist) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |us: u64| us as f64 / 1_000.0;
    Percentiles {
        count: h.len(),
        min_ms: ms(h.min()),
        mean_ms: h.mean() / 1_000.0,
        p50_ms: ms(h.value_at_quantile(0.50)),
        p90_ms: ms(h.value_at_quantile(0.90)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p99_9_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
    }
}

/// Write `h` (microseconds) in HdrHistogram's percentile distribution text format, values in
/// milliseconds, five ticks per half distance.
pub fn write_hgrm(out: &mut impl Write, h: &Hist) -> std::io::Result<()> {
    let scale = 1_000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let value = v.value_iterated_to() as f64 / scale;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            writeln!(
                out,
                "{value:12.3} {q:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - q)
            )?;
        } else {
            writeln!(out, "{value:12.3} {q:2.12} {total:10}")?;
        }
    }
    let sub_buckets = 1u64 << (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32;
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / scale,
        h.stdev() / scale
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / scale,
        h.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_from_serialised_parts() {
        let (mut a, mut b) = (new_latency(), new_latency());
        for us in 1..=1_000u64 {
            a.record(us).unwrap();
        }
        for _ in 0..1_000 {
            b.record(50_000).unwrap(); // 50 ms
        }
        let parts = [to_b64(&a).unwrap(), to_b64(&b).unwrap()];
        let m = merge_b64(parts.iter().map(String::as_str)).unwrap();
        assert_eq!(m.len(), 2_000);
        assert_eq!(m.max(), b.max());
        assert_eq!(m.min(), 1);
        assert_eq!(m.value_at_quantile(0.25), a.value_at_quantile(0.5));
        let p = percentiles(&m);
        assert!((p.p99_ms - 50.0).abs() < 0.1, "{p:?}");
        assert!(from_b64("not base64!").is_err());
        assert!(from_b64("AAAA").is_err());
    }

    #[test]
    fn record_ns_clamps() {
        let mut h = new_latency();
        record_ns(&mut h, 0);
        record_ns(&mut h, 10_000_000_000_000);
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= MAX_US);
    }

    #[test]
    fn hgrm_format() {
        let mut h = new_latency();
        for us in [1_000u64, 2_000, 3_000, 4_000] {
            h.record(us).unwrap();
        }
        let mut out = Vec::new();
        write_hgrm(&mut out, &h).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut lines = text.lines();
        let head = lines.next().unwrap();
        assert!(head.contains("Value") && head.contains("1/(1-Percentile)"));
        assert_eq!(lines.next(), Some(""));
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first[0], "1.000");
        assert_eq!(first[1], "0.000000000000");
        assert!(text.contains("Total count    =            4]"), "{text}");
        assert!(text.contains("SubBuckets     =         2048"), "{text}");
        let last_data = text.lines().rfind(|l| !l.starts_with('#')).unwrap();
        assert!(last_data.contains("1.000000000000"), "{text}");
    }
}
