//! Line plots of training curves and metrics, drawn with plotters into an in-memory RGB
//! buffer and written as PNG atomically (plotters' own file output writes in place, so a
//! crash mid-write would leave a broken file where the last good plot was). Long noisy
//! per-iteration losses can be smoothed: the raw curve is drawn light and a centred moving
//! average goes on top, so both the trend and the spread stay visible.

use std::path::Path;

use image::RgbImage;
use plotters::backend::{BitMapBackend, RGBPixel};
use plotters::coord::ranged1d::{Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::grid::save_png;
use super::{ensure_font, FigureError, FONT_FAMILY};

/// Size of every line plot in pixels, `(width, height)`.
pub const PLOT_SIZE: (u32, u32) = (800, 500);

/// One named curve. Points are drawn in the order given; non-finite points are skipped.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
    /// Draw the raw curve light and a moving average (window ~ n/50) on top.
    pub smooth: bool,
}

impl<'a> Series<'a> {
    pub fn new(name: &'a str, points: &'a [(f64, f64)]) -> Self {
        Self {
            name,
            points,
            smooth: false,
        }
    }

    /// A series drawn with a moving average on top of the light raw curve.
    pub fn smoothed(name: &'a str, points: &'a [(f64, f64)]) -> Self {
        Self {
            name,
            points,
            smooth: true,
        }
    }
}

/// matplotlib's "tab10" palette as 0xRRGGBB: distinct colours, familiar to ML readers.
const PALETTE: [u32; 10] = [
    0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf,
];

/// Draws `series` to a PNG of [`PLOT_SIZE`] at `path` (atomically, creating parent folders).
/// With `log_y`, points with y <= 0 are skipped. A legend appears when there are two or
/// more series. No points at all still gives empty, labelled axes.
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<(), FigureError> {
    let img = render_line_plot(title, x_label, y_label, series, log_y)?;
    save_png(&img, path)
}

/// Same as [`line_plot`], returning the image instead of writing it.
pub fn render_line_plot(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<RgbImage, FigureError> {
    ensure_font()?;
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .copied()
                .filter(|&(x, y)| x.is_finite() && y.is_finite() && (!log_y || y > 0.0))
                .collect()
        })
        .collect();
    let all = || curves.iter().flatten();
    let x_range = axis_range(all().map(|p| p.0), false, false);
    let y_range = axis_range(all().map(|p| p.1), log_y, true);

    let (w, h) = PLOT_SIZE;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let backend = BitMapBackend::<RGBPixel>::with_buffer_and_format(&mut buf, (w, h))
            .map_err(|e| FigureError::Plot(e.to_string()))?;
        let root = backend.into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(title, (FONT_FAMILY, 22))
            .margin(15)
            .x_label_area_size(50)
            .y_label_area_size(75);
        let x = x_range.0..x_range.1;
        let y = y_range.0..y_range.1;
        if log_y {
            // plotters' own log ticks start at the first power of ten inside the range, so
            // a loss between 0.04 and 1 gets no label below 0.1; choose ticks ourselves.
            let (bold, light) = log_ticks(y_range.0, y_range.1);
            let y = y.log_scale().with_key_points(bold).with_light_points(light);
            let mut chart = builder.build_cartesian_2d(x, y).map_err(plot_err)?;
            draw_chart(&mut chart, series, &curves, x_label, y_label)?;
        } else {
            let mut chart = builder.build_cartesian_2d(x, y).map_err(plot_err)?;
            draw_chart(&mut chart, series, &curves, x_label, y_label)?;
        }
        root.present().map_err(plot_err)?;
    }
    RgbImage::from_raw(w, h, buf).ok_or_else(|| FigureError::Plot("plot buffer has the wrong size".into()))
}

fn plot_err(e: impl std::fmt::Display) -> FigureError {
    FigureError::Plot(e.to_string())
}

/// Draws mesh, curves and legend on a chart whose y axis is linear or logarithmic.
fn draw_chart<'a, DB, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, Y>>,
    series: &[Series],
    curves: &[Vec<(f64, f64)>],
    x_label: &str,
    y_label: &str,
) -> Result<(), FigureError>
where
    DB: DrawingBackend + 'a,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&format_tick)
        .y_label_formatter(&format_tick)
        .label_style((FONT_FAMILY, 14))
        .axis_desc_style((FONT_FAMILY, 16))
        .max_light_lines(1)
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()
        .map_err(plot_err)?;

    for (i, (s, pts)) in series.iter().zip(curves).enumerate() {
        let hex = PALETTE[i % PALETTE.len()];
        let (r, g, b) = ((hex >> 16) as u8, (hex >> 8) as u8, hex as u8);
        let color = RGBColor(r, g, b);
        let window = pts.len() / 50;
        let smoothed = s.smooth && window >= 2;
        let drawn = if smoothed {
            // Solid light tint rather than alpha: thousands of overlapping translucent
            // segments would pile up into a dark smear.
            let light = |c: u8| c + ((255 - c) as f32 * 0.7) as u8;
            let raw = RGBColor(light(r), light(g), light(b));
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), raw.stroke_width(1)))
                .map_err(plot_err)?;
            moving_average(pts, window)
        } else {
            pts.clone()
        };
        let style = color.stroke_width(2);
        let line_series = if drawn.len() == 1 {
            // A one-point line is invisible; a dot shows where it is.
            chart.draw_series(drawn.iter().map(|&p| Circle::new(p, 4, color.filled())))
        } else {
            chart.draw_series(LineSeries::new(drawn, style))
        }
        .map_err(plot_err)?;
        if series.len() > 1 {
            line_series
                .label(s.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FONT_FAMILY, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Centred moving average of y over `window` points, truncated at the ends so the curve
/// spans the same x range as the raw one (a trailing average would lag by window / 2).
fn moving_average(pts: &[(f64, f64)], window: usize) -> Vec<(f64, f64)> {
    let half = window / 2;
    let mut prefix = Vec::with_capacity(pts.len() + 1);
    prefix.push(0.0);
    for &(_, y) in pts {
        prefix.push(prefix[prefix.len() - 1] + y);
    }
    (0..pts.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(pts.len());
            (pts[i].0, (prefix[hi] - prefix[lo]) / (hi - lo) as f64)
        })
        .collect()
}

/// Axis limits covering `values`. A single value or all-equal values get a symmetric window
/// around them (plotters draws nothing on an empty range); `pad` adds 5% headroom; no
/// values at all give a default window.
fn axis_range(values: impl Iterator<Item = f64>, log: bool, pad: bool) -> (f64, f64) {
    let to_axis = |v: f64| if log { v.log10() } else { v };
    let (lo, hi) = values
        .map(to_axis)
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if !lo.is_finite() || !hi.is_finite() {
        (0.0, 1.0)
    } else if hi - lo <= 1e-12 * lo.abs().max(hi.abs()).max(1.0) {
        // In log space half a decade (about x3) each side; linear: 10% of |value|, or 1 at 0.
        let half = if log {
            0.5
        } else if lo == 0.0 {
            1.0
        } else {
            0.1 * lo.abs()
        };
        (lo - half, hi + half)
    } else if pad {
        let m = 0.05 * (hi - lo);
        (lo - m, hi + m)
    } else {
        (lo, hi)
    };
    if log {
        (10f64.powf(lo), 10f64.powf(hi))
    } else {
        (lo, hi)
    }
}

/// Ticks for a log axis over `[lo, hi]`, `(bold, light)`: the densest of 1-9, 1-2-5 or 1
/// per decade giving at most [`MAX_TICKS`] labels (every k-th decade beyond that), with
/// 1-9 per decade as light lines. A range narrower than one tick step gets linear ticks.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let (kmin, kmax) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    // Tolerance so a tick exactly at an end survives rounding in 10^k.
    let inside = |v: &f64| *v >= lo * (1.0 - 1e-9) && *v <= hi * (1.0 + 1e-9);
    let with = |mults: &[f64], every: i32| -> Vec<f64> {
        (kmin..=kmax)
            .filter(|k| (k - kmin) % every == 0)
            .flat_map(|k| mults.iter().map(move |m| m * 10f64.powi(k)))
            .filter(inside)
            .collect()
    };
    let all = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let dense = with(&all, 1);
    if dense.len() < 2 {
        return (linear_ticks(lo, hi), dense);
    }
    for mults in [&all[..], &[1.0, 2.0, 5.0], &[1.0]] {
        let ticks = with(mults, 1);
        if ticks.len() <= MAX_TICKS {
            return (ticks, dense);
        }
    }
    // Beyond ~10 decades 1-9 light lines merge into grey; decades alone read better.
    let every = (kmax - kmin) / MAX_TICKS as i32 + 1;
    (with(&[1.0], every), with(&[1.0], 1))
}

const MAX_TICKS: usize = 10;

/// Round-number ticks (1, 2 or 5 times a power of ten apart) covering `[lo, hi]`.
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 6.0;
    if !(raw.is_finite() && raw > 0.0) {
        return vec![lo];
    }
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    // Integer multiples of step, so 0.1 + 0.2 style drift never shows up in labels.
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

/// Tick text with about four significant digits, switching to scientific notation for very
/// large or small magnitudes so labels stay short.
fn format_tick(v: &f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        return "0".into();
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.1e}");
    }
    let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn assert_png(path: &Path) -> TestResult {
        let img = image::open(path)?;
        assert_eq!((img.width(), img.height()), PLOT_SIZE);
        Ok(())
    }

    #[test]
    fn one_point_and_two_series_plots() -> TestResult {
        let dir = tempfile::tempdir()?;
        let one = [(3.0, 0.25)];
        let a = [(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.0), (4.0, 0.2)];
        let b = [(0.0, 0.9), (2.0, 0.6), (4.0, 0.4)];
        let two = [Series::new("train", &a), Series::new("val", &b)];
        for log_y in [false, true] {
            let path = dir.path().join(format!("deep/one_{log_y}.png"));
            line_plot(&path, "one", "step", "loss", &[Series::new("l", &one)], log_y)?;
            assert_png(&path)?;
            let path = dir.path().join(format!("two_{log_y}.png"));
            line_plot(&path, "two", "epoch", "loss", &two, log_y)?;
            assert_png(&path)?;
        }
        Ok(())
    }

    #[test]
    fn long_smoothed_curve_linear_and_log() -> TestResult {
        let dir = tempfile::tempdir()?;
        // A decaying loss with deterministic wiggle, 10,000 points.
        let pts: Vec<(f64, f64)> = (0..10_000)
            .map(|i| {
                let t = i as f64;
                (t, 0.05 + (-t / 2000.0).exp() * (1.0 + 0.3 * (t * 1.7).sin()))
            })
            .collect();
        for log_y in [false, true] {
            let path = dir.path().join(format!("long_{log_y}.png"));
            let s = [Series::smoothed("train", &pts)];
            line_plot(&path, "loss", "iteration", "mse", &s, log_y)?;
            assert_png(&path)?;
        }
        Ok(())
    }

    #[test]
    fn empty_and_constant_series_still_plot() -> TestResult {
        let flat = [(0.0, 2.0), (1.0, 2.0)];
        let img = render_line_plot("flat", "x", "y", &[Series::new("f", &flat)], false)?;
        assert_eq!(img.dimensions(), PLOT_SIZE);
        let img = render_line_plot("empty", "x", "y", &[Series::new("e", &[])], true)?;
        assert_eq!(img.dimensions(), PLOT_SIZE);
        Ok(())
    }

    #[test]
    fn ranges() {
        assert_eq!(axis_range([1.0, 3.0].into_iter(), false, false), (1.0, 3.0));
        let (lo, hi) = axis_range([2.0].into_iter(), false, false);
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
        assert_eq!(axis_range([0.0].into_iter(), false, true), (-1.0, 1.0));
        assert_eq!(axis_range(std::iter::empty(), false, true), (0.0, 1.0));
        let (lo, hi) = axis_range([0.01, 1.0].into_iter(), true, false);
        assert!((lo - 0.01).abs() < 1e-12 && (hi - 1.0).abs() < 1e-12);
        // One value in log space: half a decade each side, 10^(-0.5) and 10^(0.5).
        let (lo, hi) = axis_range([1.0].into_iter(), true, true);
        assert!((lo - 0.316_227_766).abs() < 1e-6 && (hi - 3.162_277_66).abs() < 1e-6);
    }

    #[test]
    fn moving_average_is_centred_and_truncated() {
        let pts: Vec<(f64, f64)> = (0..5).map(|i| (i as f64, i as f64)).collect();
        // window 3 (half 1): means of {0,1}, {0,1,2}, {1,2,3}, {2,3,4}, {3,4}.
        let ys: Vec<f64> = moving_average(&pts, 3).iter().map(|p| p.1).collect();
        assert_eq!(ys, vec![0.5, 1.0, 2.0, 3.0, 3.5]);
    }

    #[test]
    fn log_ticks_cover_the_range() {
        // 0.04..1.3: 1-9 per decade would be 16 labels, so 1-2-5 it is.
        let (bold, light) = log_ticks(0.04, 1.3);
        assert_eq!(bold.len(), 5);
        let expected = [0.05, 0.1, 0.2, 0.5, 1.0];
        assert!(bold.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-12));
        assert!(light.len() > bold.len());
        // Twenty decades: every third decade, at most MAX_TICKS labels.
        let (bold, _) = log_ticks(1e-10, 1e10);
        assert!(bold.len() <= MAX_TICKS && bold.len() >= 5);
        // Narrower than one 1-9 step: linear ticks 0.31, 0.32, ... 0.35.
        let (bold, _) = log_ticks(0.305, 0.355);
        assert_eq!(bold.len(), 5);
        assert!((bold[0] - 0.31).abs() < 1e-12);
    }

    #[test]
    fn tick_labels() {
        assert_eq!(format_tick(&0.0), "0");
        assert_eq!(format_tick(&10000.0), "10000");
        assert_eq!(format_tick(&0.25), "0.25");
        assert_eq!(format_tick(&0.0001), "1.0e-4");
        assert_eq!(format_tick(&2.5e6), "2.5e6");
    }
}
