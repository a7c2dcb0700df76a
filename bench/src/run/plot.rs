//! SVG plots of a run (plotters): lines (latency CDFs, latency against
//! load, load and instances over time) and bars (cold-start breakdowns).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn fail<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("plotting: {e:?}")
}

/// One named series of points.
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// Ready instances over time and a load curve on the same axes, the load
/// scaled so that its peak (at least 1) reaches `top` instances; its legend
/// says the divisor.
pub fn instances_and_load(
    path: &Path,
    title: &str,
    instances: &[(f64, f64)],
    load_name: &str,
    load: &[(f64, f64)],
    top: f64,
) -> Result<()> {
    let peak = load.iter().map(|p| p.1).fold(1.0f64, f64::max);
    lines(
        path,
        title,
        "seconds",
        "instances (load scaled to the peak)",
        &[
            Series {
                name: "ready instances".into(),
                points: instances.to_vec(),
            },
            Series {
                name: format!("{load_name} ÷ {:.0}", peak / top),
                points: load.iter().map(|p| (p.0, p.1 / peak * top)).collect(),
            },
        ],
        false,
    )
}

/// A line chart of `series` on shared axes; `log_x` for latencies.
pub fn lines(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[Series],
    log_x: bool,
) -> Result<()> {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(a, b) in all {
        x0 = x0.min(a);
        x1 = x1.max(a);
        y1 = y1.max(b);
    }
    if x0 > x1 {
        return Ok(()); // nothing to draw
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 <= 0.0 { 1.0 } else { y1 * 1.05 };
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56);
    if log_x {
        let x0 = x0.max(1e-3);
        let chart = builder
            .build_cartesian_2d((x0..x1.max(x0 * 1.01)).log_scale(), 0.0..y1)
            .map_err(fail)?;
        draw_lines(chart, x, y, series)?;
    } else {
        let chart = builder.build_cartesian_2d(x0..x1, 0.0..y1).map_err(fail)?;
        draw_lines(chart, x, y, series)?;
    }
    root.present().map_err(fail)
}

/// The mesh, one line per series and the legend, on either x axis.
fn draw_lines<'a, X>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    x: &str,
    y: &str,
    series: &[Series],
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x)
        .y_desc(y)
        .draw()
        .map_err(fail)?;
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        chart
            .draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(fail)?
            .label(s.name.clone())
            .legend(move |(a, b)| {
                PathElement::new(vec![(a, b), (a + 16, b)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(fail)
}

/// A bar chart, one bar per `(label, value)`.
pub fn bars(path: &Path, title: &str, y: &str, bars: &[(String, f64)]) -> Result<()> {
    if bars.is_empty() {
        return Ok(());
    }
    let top = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9) * 1.1;
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(fail)?;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
        .map_err(fail)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc(y)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(fail)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, v))| {
            let color = PALETTE[i % PALETTE.len()];
            Rectangle::new(
                [
                    (SegmentValue::Exact(i), 0.0),
                    (SegmentValue::Exact(i + 1), *v),
                ],
                color.filled(),
            )
        }))
        .map_err(fail)?;
    root.present().map_err(fail)
}
