//! `appliance exp report`: the rows of a batch ([`super::summary`]) per parameter point:
//! count, mean, standard deviation, min and max of each metric and of the run time; and a
//! plot of one metric against one parameter, a line per value of another, with error bars
//! (one standard deviation) over the repetitions, as SVG.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;

use super::summary::Row;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no run has the metric `{metric}`{hint}")]
    NoMetric { metric: String, hint: String },
    #[error("the parameter `{name}` is not in the matrix{hint}")]
    NoParameter { name: String, hint: String },
    #[error("the parameter `{name}` has a value that is not a number (`{value}`): a plot's x axis needs numbers")]
    NotNumeric { name: String, value: String },
    #[error("cannot draw {}: {message}", path.display())]
    Draw { path: std::path::PathBuf, message: String },
    #[error("no font to draw the plot's text with (none of {}): apt-get install fonts-dejavu-core", PNG_FONTS.join(", "))]
    NoFont,
}

/// Count, mean, sample standard deviation, min and max.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub count: usize,
    pub mean: f64,
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Option<Stats> {
        let count = values.len();
        if count == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / count as f64;
        let var =
            if count > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (count - 1) as f64 } else { 0.0 };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Stats { count, mean, stddev: var.sqrt(), min, max })
    }
}

/// The statistics of one point: per quantity (`wall_s`, `metric <name>`, per role), and
/// how many of its rows failed.
#[derive(Debug, Clone)]
pub struct PointStats {
    pub point: String,
    pub rows: usize,
    pub failed: usize,
    pub quantities: BTreeMap<String, Stats>,
}

/// Per point, in the order the rows come in.
pub fn by_point(rows: &[Row]) -> Vec<PointStats> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in rows {
        if !order.contains(&r.point) {
            order.push(r.point.clone());
        }
        let c = counts.entry(r.point.clone()).or_default();
        c.0 += 1;
        if r.outcome.status != "ok" {
            c.1 += 1;
            continue;
        }
        let q = values.entry(r.point.clone()).or_default();
        q.entry(format!("{} wall_s", r.role)).or_default().push(r.outcome.wall_s);
        for (m, v) in &r.outcome.metrics {
            q.entry(format!("{} {m}", r.role)).or_default().push(*v);
        }
    }
    order
        .into_iter()
        .map(|point| {
            let (rows, failed) = counts.get(&point).copied().unwrap_or_default();
            let quantities = values
                .get(&point)
                .map(|q| q.iter().filter_map(|(k, v)| Stats::of(v).map(|s| (k.clone(), s))).collect())
                .unwrap_or_default();
            PointStats { point, rows, failed, quantities }
        })
        .collect()
}

/// The tables as text, one per point.
pub fn render(stats: &[PointStats]) -> String {
    let mut out = String::new();
    for p in stats {
        out.push_str(&format!("{}  ({} row(s), {} failed)\n", p.point, p.rows, p.failed));
        out.push_str(&format!(
            "  {:<28} {:>5} {:>12} {:>12} {:>12} {:>12}\n",
            "quantity", "n", "mean", "stddev", "min", "max"
        ));
        for (name, s) in &p.quantities {
            out.push_str(&format!(
                "  {:<28} {:>5} {:>12.4} {:>12.4} {:>12.4} {:>12.4}\n",
                name, s.count, s.mean, s.stddev, s.min, s.max
            ));
        }
        out.push('\n');
    }
    out
}

/// What to plot: `metric` against parameter `x`, one line per value of `by`.
pub struct PlotSpec<'a> {
    pub metric: &'a str,
    pub x: &'a str,
    pub by: Option<&'a str>,
}

/// TrueType fonts the PNG's text can be drawn with, the first that exists (Debian's
/// fonts-dejavu-core and fonts-liberation).
pub const PNG_FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Registers the first of [`PNG_FONTS`] as plotters' "sans-serif", once; its path, or
/// `None` when there is none (both backends measure the text with it).
fn png_font() -> Option<&'static str> {
    static FONT: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *FONT.get_or_init(|| {
        let (path, bytes) = PNG_FONTS.iter().find_map(|p| std::fs::read(p).ok().map(|b| (*p, b)))?;
        // plotters keeps the font for the program's life.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).ok()?;
        Some(path)
    })
}

/// Draws the plot into `path` (SVG) and beside it as PNG (`path` with `.png`), whose path
/// it returns. Needs one of [`PNG_FONTS`] for the text.
pub fn plot(rows: &[Row], spec: &PlotSpec<'_>, path: &Path) -> Result<std::path::PathBuf, ReportError> {
    let points = plot_points(rows, spec)?;
    png_font().ok_or(ReportError::NoFont)?;
    let draw_err = |e: &dyn std::fmt::Display| ReportError::Draw { path: path.into(), message: e.to_string() };
    draw(SVGBackend::new(path, (900, 600)).into_drawing_area(), &points, spec).map_err(|e| draw_err(&e))?;
    let png = path.with_extension("png");
    let png_err = |e: &dyn std::fmt::Display| ReportError::Draw { path: png.clone(), message: e.to_string() };
    draw(BitMapBackend::new(&png, (900, 600)).into_drawing_area(), &points, spec).map_err(|e| png_err(&e))?;
    Ok(png)
}

/// Each line's label and its points: x, and the statistics of the metric there.
type Lines = Vec<(String, Vec<(f64, Stats)>)>;

fn plot_points(rows: &[Row], spec: &PlotSpec<'_>) -> Result<Lines, ReportError> {
    let params: Vec<String> = rows.first().map(|r| r.params.keys().cloned().collect()).unwrap_or_default();
    for name in std::iter::once(spec.x).chain(spec.by) {
        if !params.iter().any(|p| p == name) {
            let hint = appliance_cmdline::suggest::closest(name, params.iter().map(String::as_str))
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            return Err(ReportError::NoParameter { name: name.into(), hint });
        }
    }
    // line label -> x -> values
    let mut series: BTreeMap<String, BTreeMap<i64, (f64, Vec<f64>)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.outcome.status == "ok") {
        let Some(v) = r.outcome.metrics.get(spec.metric).copied() else { continue };
        let xv = &r.params[spec.x];
        let x = xv.as_f64().ok_or_else(|| ReportError::NotNumeric { name: spec.x.into(), value: xv.to_string() })?;
        let label = match spec.by {
            Some(b) => format!("{b}={}", r.params[b].as_str().map_or_else(|| r.params[b].to_string(), String::from)),
            None => spec.metric.to_string(),
        };
        // Keyed by the bits' order so equal floats group; the value is kept beside.
        let e = series.entry(label).or_default().entry((x * 1e6) as i64).or_insert((x, Vec::new()));
        e.1.push(v);
    }
    if series.is_empty() {
        let names: std::collections::BTreeSet<&str> =
            rows.iter().flat_map(|r| r.outcome.metrics.keys().map(String::as_str)).collect();
        let hint = appliance_cmdline::suggest::closest(spec.metric, names.iter().copied())
            .map(|n| format!(" (did you mean `{n}`?)"))
            .unwrap_or_default();
        return Err(ReportError::NoMetric { metric: spec.metric.into(), hint });
    }
    Ok(series
        .into_iter()
        .map(|(label, xs)| (label, xs.into_values().filter_map(|(x, v)| Stats::of(&v).map(|s| (x, s))).collect()))
        .collect())
}

/// The chart of `points` on `root`, whatever the backend.
fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    points: &Lines,
    spec: &PlotSpec<'_>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let all = points.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
    for (x, s) in all {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y1 = y1.max(s.mean + s.stddev);
    }
    if x0 == x1 {
        x0 -= 1.0;
        x1 += 1.0;
    }
    root.fill(&WHITE)?;
    let pad = (x1 - x0) * 0.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{} by {}", spec.metric, spec.x), ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - pad)..(x1 + pad), 0f64..(y1 * 1.1).max(1e-9))?;
    chart.configure_mesh().x_desc(spec.x).y_desc(format!("{} (mean ± 1 sd)", spec.metric)).draw()?;
    for (i, (label, pts)) in points.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().map(|(x, s)| (*x, s.mean)), color.stroke_width(2)))?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(pts.iter().map(|(x, s)| {
            ErrorBar::new_vertical(*x, s.mean - s.stddev, s.mean, s.mean + s.stddev, color.filled(), 8)
        }))?;
    }
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: i64, mode: &str, rep: u32, rtt: f64) -> Row {
        let params = serde_json::json!({ "size": size, "mode": mode });
        Row {
            point: format!("mode={mode},size={size}"),
            rep,
            node: "client-1".into(),
            role: "client".into(),
            params: params.as_object().unwrap().clone(),
            outcome: crate::exp::node::Outcome {
                node: "client-1".into(),
                status: "ok".into(),
                exit: 0,
                reason: None,
                wall_s: 10.0 + f64::from(rep),
                phases_ms: BTreeMap::new(),
                results_files: 1,
                results_bytes: 10,
                metrics: [("rtt_us".to_string(), rtt)].into(),
                rendezvous: BTreeMap::new(),
            },
        }
    }

    #[test]
    fn a_table_per_point_and_a_plot_with_a_line_per_value() {
        let mut rows = Vec::new();
        for (mode, base) in [("a", 100.0), ("b", 300.0)] {
            for size in [64, 1024, 16384] {
                for rep in 1..=3 {
                    rows.push(row(size, mode, rep, base + size as f64 / 100.0 + f64::from(rep)));
                }
            }
        }
        let stats = by_point(&rows);
        assert_eq!(stats.len(), 6);
        let s = stats[0].quantities["client rtt_us"];
        assert_eq!((s.count, s.mean, s.min, s.max), (3, 102.64, 101.64, 103.64));
        let table = render(&stats);
        assert!(table.contains("mode=a,size=64  (3 row(s), 0 failed)"), "{table}");
        assert!(table.contains("client wall_s"), "{table}");
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("p.svg");
        let png = plot(&rows, &PlotSpec { metric: "rtt_us", x: "size", by: Some("mode") }, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.starts_with("<svg") && text.contains("mode=a") && text.contains("mode=b"), "{text}");
        // The same plot as PNG beside it.
        assert_eq!(png, dir.path().join("p.png"));
        let bytes = std::fs::read(&png).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 5000, "{} bytes", bytes.len());
        let e = plot(&rows, &PlotSpec { metric: "rtt", x: "size", by: None }, &svg).unwrap_err();
        assert!(e.to_string().contains("no run has the metric `rtt`"), "{e}");
        let e = plot(&rows, &PlotSpec { metric: "rtt_us", x: "mode", by: None }, &svg).unwrap_err();
        assert!(e.to_string().contains("not a number"), "{e}");
        let e = plot(&rows, &PlotSpec { metric: "rtt_us", x: "sise", by: None }, &svg).unwrap_err();
        assert!(e.to_string().contains("did you mean `size`?"), "{e}");
    }

    #[test]
    fn stats_of_a_sample() {
        let s = Stats::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((s.count, s.mean, s.min, s.max), (8, 5.0, 2.0, 9.0));
        assert!((s.stddev - 2.138).abs() < 1e-3, "{s:?}");
        assert_eq!(Stats::of(&[3.0]).unwrap().stddev, 0.0);
        assert!(Stats::of(&[]).is_none());
    }
}
