//! The latency plot: latency (ms) against percentile, the percentile axis log-scaled as
//! 1/(1-p) the way HdrHistogram plots are drawn, so the tail gets room.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

use crate::hist::Hist;

/// Load the TTF at `font` once and register it as "sans-serif" for plotters' text.
fn register(font: &Path) -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(font).map_err(|e| format!("{}: {e}", font.display()))?;
        // The font must live as long as the process; it is loaded once.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{}: not a usable font", font.display()))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// `x = 1/(1-p)` as a percentile label: 1 -> "0%", 10 -> "90%", 1000 -> "99.9%".
pub fn percentile_label(x: f64) -> String {
    if x <= 1.0 {
        return "0%".to_string();
    }
    let pct = 100.0 * (1.0 - 1.0 / x);
    let decimals = (x.log10().ceil() as i64 - 2).clamp(0, 6) as usize;
    format!("{pct:.decimals$}%")
}

/// The x extent for a histogram of `count` values: the next power of ten, at least 100.
fn x_max(count: u64) -> f64 {
    let decades = (count.max(1) as f64).log10().ceil().clamp(2.0, 7.0);
    10f64.powf(decades)
}

/// (1/(1-p), ms) points of a histogram's percentile curve, ending at its max.
fn curve(h: &Hist, xmax: f64) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = h
        .iter_quantiles(10)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| {
            let x = (1.0 / (1.0 - v.quantile_iterated_to())).min(xmax);
            (x, v.value_iterated_to() as f64 / 1_000.0)
        })
        .collect();
    pts.push((xmax, h.max() as f64 / 1_000.0));
    pts
}

/// Draw `series` (label, histogram in microseconds) into a PNG at `path`.
pub fn percentile_plot(
    path: &Path,
    font: &Path,
    title: &str,
    series: &[(&str, &Hist)],
) -> anyhow::Result<()> {
    register(font).context("loading the plot font")?;
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    anyhow::ensure!(!series.is_empty(), "nothing to plot");
    let xmax = series
        .iter()
        .map(|(_, h)| x_max(h.len()))
        .fold(100.0, f64::max);
    let ymax = series
        .iter()
        .map(|(_, h)| h.max() as f64 / 1_000.0)
        .fold(0.001, f64::max)
        * 1.1;
    let draw = |e| anyhow!("drawing {}: {e}", path.display());

    let root = BitMapBackend::new(path, (1200, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(draw)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 28))
        .margin(24)
        .margin_right(56)
        .x_label_area_size(64)
        .y_label_area_size(90)
        .build_cartesian_2d((1f64..xmax).log_scale(), 0f64..ymax)
        .map_err(draw)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .x_label_formatter(&|x| percentile_label(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .axis_desc_style(("sans-serif", 22))
        .label_style(("sans-serif", 16))
        .draw()
        .map_err(draw)?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, h)) in series.iter().enumerate() {
        let color = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(curve(h, xmax), color.stroke_width(2)))
            .map_err(draw)?
            .label(format!(
                "{label}  (n={}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms)",
                h.len(),
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.max() as f64 / 1e3
            ))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(draw)?;
    root.present().map_err(draw)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(percentile_label(1.0), "0%");
        assert_eq!(percentile_label(2.0), "50%");
        assert_eq!(percentile_label(10.0), "90%");
        assert_eq!(percentile_label(100.0), "99%");
        assert_eq!(percentile_label(1_000.0), "99.9%");
        assert_eq!(percentile_label(100_000.0), "99.999%");
    }

    #[test]
    fn extents() {
        assert_eq!(x_max(5), 100.0);
        assert_eq!(x_max(19_000), 100_000.0);
        assert_eq!(x_max(u64::MAX), 1e7);
    }
}
