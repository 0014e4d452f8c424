// SPDX-License-Identifier: MPL-2.0
//! The benchmark's plots, drawn from bench.json (what bench/bench.rs writes, or an earlier
//! run's file with `bench --plot-only`): bench.png (vmemexport alone), bench-e2e.png (end to
//! end) and, when the run has the decoder section, bench-decoder.png. Text uses the DejaVu Sans font vendored beside this file, so no system font is needed.

use std::error::Error;
use std::path::{Path, PathBuf};

use plotters::coord::combinators::{LogCoord, WithKeyPoints};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordi32;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde_json::Value;

type Res<T> = Result<T, Box<dyn Error>>;

const FONT: &str = "sans-serif";
const GREEN: RGBColor = RGBColor(40, 150, 60);
const LIGHT_GREEN: RGBColor = RGBColor(140, 205, 120);
const RED: RGBColor = RGBColor(200, 50, 40);
const GREY: RGBColor = RGBColor(150, 150, 150);
const BLUE: RGBColor = RGBColor(60, 110, 190);

/// One variant's time per frame inside the element, for one format and size.
struct ElementPoint {
    group: String,
    variant: String,
    median: f64,
    min: f64,
    max: f64,
}

struct EndToEnd {
    case: String,
    upstream: f64,
    ours: f64,
    producer: f64,
}

/// One arm of the decoder section; None where the arm failed.
struct DecoderArm {
    case: String,
    variant: String,
    figures: Option<[f64; 3]>,
}

struct Results {
    /// "GStreamer 1.26.2, kernel 6.12.117, qemu TCG, 2 vCPUs, 2026-11-25"
    setting: String,
    element: Vec<ElementPoint>,
    end_to_end: Vec<EndToEnd>,
    /// CPU ms per frame, MiB copied per frame, peak RSS MiB.
    decoder: Vec<DecoderArm>,
}

fn parse(json: &str) -> Res<Results> {
    let v: Value = serde_json::from_str(json)?;
    let s = |v: &Value, k: &str| -> Res<String> {
        Ok(v[k]
            .as_str()
            .ok_or_else(|| format!("bench.json: no string \"{k}\""))?
            .to_string())
    };
    let f = |v: &Value, k: &str| -> Res<f64> {
        v[k].as_f64()
            .ok_or_else(|| format!("bench.json: no number \"{k}\"").into())
    };
    let list = |k: &str| -> Res<&Vec<Value>> {
        v[k].as_array()
            .ok_or_else(|| format!("bench.json: no list \"{k}\"").into())
    };
    let mut element = Vec::new();
    for p in list("element")? {
        let t = &p["us_per_frame"];
        element.push(ElementPoint {
            group: format!("{} {}x{}", s(p, "format")?, f(p, "width")?, f(p, "height")?),
            variant: s(p, "variant")?,
            median: f(t, "median")?,
            min: f(t, "min")?,
            max: f(t, "max")?,
        });
    }
    let mut end_to_end = Vec::new();
    for c in list("end_to_end")? {
        end_to_end.push(EndToEnd {
            case: s(c, "case")?,
            upstream: f(c, "upstream_cpu_us")?,
            ours: f(c, "ours_cpu_us")?,
            producer: f(c, "producer_cpu_us")?,
        });
    }
    let mut decoder = Vec::new();
    for a in v["decoder"]["arms"].as_array().into_iter().flatten() {
        let figures = if a["error"].is_null() {
            Some([
                f(&a["cpu_us_per_frame"], "median")? / 1e3,
                f(a, "copied_bytes_per_frame")? / 1048576.0,
                f(a, "peak_rss_kib")? / 1024.0,
            ])
        } else {
            None
        };
        decoder.push(DecoderArm {
            case: s(a, "case")?,
            variant: s(a, "variant")?,
            figures,
        });
    }
    Ok(Results {
        decoder,
        setting: format!(
            "{}, kernel {}, {}, {}",
            s(&v, "gstreamer")?,
            s(&v, "kernel")?,
            s(&v, "testbed")?,
            s(&v, "date")?
        ),
        element,
        end_to_end,
    })
}

/// Draws bench.png and bench-e2e.png beside `json` (a bench.json); returns their paths.
pub fn plot_results(json: &Path) -> Res<Vec<PathBuf>> {
    static FONT_ONCE: std::sync::Once = std::sync::Once::new();
    FONT_ONCE.call_once(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, include_bytes!("DejaVuSans.ttf"))
            .unwrap_or_else(|_| panic!("bench/plot/DejaVuSans.ttf is not a usable font"));
    });
    let text = std::fs::read_to_string(json).map_err(|e| format!("{}: {e}", json.display()))?;
    let results = parse(&text).map_err(|e| format!("{}: {e}", json.display()))?;
    let dir = json.parent().unwrap_or(Path::new("."));
    let (element, e2e) = (dir.join("bench.png"), dir.join("bench-e2e.png"));
    write_png(&element, (1200, 620), |root| plot_element(root, &results))?;
    write_png(&e2e, (1400, 620), |root| plot_end_to_end(root, &results))?;
    let mut written = vec![element, e2e];
    if !results.decoder.is_empty() {
        let decoder = dir.join("bench-decoder.png");
        write_png(&decoder, (1500, 560), |root| plot_decoder(root, &results))?;
        written.push(decoder);
    }
    Ok(written)
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn write_png(path: &Path, size: (u32, u32), draw: impl FnOnce(&Area) -> Res<()>) -> Res<()> {
    let mut rgb = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), size.0, size.1);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(&rgb)?;
    Ok(())
}

/// "150 µs", "1.5 ms", "2 s": a time given in microseconds, in the unit that suits it.
fn human_us(us: f64) -> String {
    let (v, unit) = if us >= 1e6 {
        (us / 1e6, "s")
    } else if us >= 1e3 {
        (us / 1e3, "ms")
    } else {
        (us, "µs")
    };
    if v >= 100.0 || v.fract().abs() < 1e-9 {
        format!("{v:.0} {unit}")
    } else if v >= 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.2} {unit}")
    }
}

/// A log axis from the decade below `lo` to the decade above `hi` (with headroom for labels).
fn decades(lo: f64, hi: f64) -> std::ops::Range<f64> {
    let lo = 10f64.powf(lo.max(0.1).log10().floor());
    let hi = 10f64.powf((hi * 3.0).log10().ceil());
    lo..hi
}

/// Axis labels only at powers of ten (plotters' own log key points add 2x and 5x values that
/// crowd a short axis).
fn decade_labels(range: &std::ops::Range<f64>) -> Vec<f64> {
    let (a, b) = (
        range.start.log10().round() as i32,
        range.end.log10().round() as i32,
    );
    (a..=b).map(|e| 10f64.powi(e)).collect()
}

/// The x axis counts in thousandths of a group (integers, so plotters formats its labels):
/// group i spans [i * G, (i + 1) * G), its bars share the middle 80%.
const G: i32 = 1000;

/// Bar `si` of `n` in group `gi`: its left and right edges and its centre.
fn bar_x(gi: usize, si: usize, n: usize) -> (i32, i32, i32) {
    let w = G * 8 / 10 / n.max(1) as i32;
    let x0 = gi as i32 * G + G / 10 + si as i32 * w;
    (x0, x0 + w * 9 / 10, x0 + w * 9 / 20)
}

/// Groups along x, `Y` along y.
type BarChart<'a, 'b, Y> =
    ChartContext<'a, BitMapBackend<'b>, Cartesian2d<WithKeyPoints<RangedCoordi32>, Y>>;

/// The text sizes of a chart and the room for its y labels.
#[derive(Clone, Copy)]
struct Look {
    caption: u32,
    labels: u32,
    axis_desc: u32,
    y_label_area: u32,
}

/// A chart across a whole picture or half of one.
const WIDE: Look = Look {
    caption: 20,
    labels: 14,
    axis_desc: 15,
    y_label_area: 80,
};

/// One of three charts side by side.
const NARROW: Look = Look {
    caption: 18,
    labels: 13,
    axis_desc: 14,
    y_label_area: 60,
};

/// A bar chart of `groups` with its mesh drawn: y along `y`, described as `y_desc`, its labels
/// written by `y_label` (plotters' own if None).
fn bar_chart<'a, 'b, Y>(
    area: &'a Area<'b>,
    title: &str,
    groups: &'a [String],
    y: Y,
    y_desc: &str,
    y_label: Option<&dyn Fn(&f64) -> String>,
    look: Look,
) -> Res<BarChart<'a, 'b, Y::CoordDescType>>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, look.caption))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(look.y_label_area)
        .build_cartesian_2d(
            (0..groups.len() as i32 * G)
                .with_key_points((0..groups.len() as i32).map(|i| i * G + G / 2).collect()),
            y,
        )?;
    let x_label = |x: &i32| groups.get((x / G) as usize).cloned().unwrap_or_default();
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh()
        .x_label_formatter(&x_label)
        .y_desc(y_desc)
        .label_style((FONT, look.labels))
        .axis_desc_style((FONT, look.axis_desc))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225));
    if let Some(y_label) = y_label {
        mesh.y_label_formatter(y_label);
    }
    mesh.draw()?;
    Ok(chart)
}

/// A bar chart of times: a log axis over `y`, labelled at powers of ten.
fn time_chart<'a, 'b>(
    area: &'a Area<'b>,
    title: &str,
    groups: &'a [String],
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> Res<BarChart<'a, 'b, WithKeyPoints<LogCoord<f64>>>> {
    let y_keys = decade_labels(&y);
    bar_chart(
        area,
        title,
        groups,
        y.log_scale().with_key_points(y_keys),
        y_desc,
        Some(&|v| human_us(*v)),
        WIDE,
    )
}

/// The legend's mark for a series of bars of `color`.
fn legend_box(color: RGBColor) -> impl Fn((i32, i32)) -> Rectangle<(i32, i32)> {
    move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
}

/// Text of `size` and `color` centred above the point it is drawn at.
fn text_above(size: u32, color: RGBColor) -> TextStyle<'static> {
    (FONT, size)
        .into_font()
        .color(&color)
        .pos(Pos::new(HPos::Center, VPos::Bottom))
}

/// A titled picture with a line under the title: the run's setting (versions, machine, date)
/// and `note`; returns the area below them.
fn titled<'a>(root: &Area<'a>, title: &str, r: &Results, note: &str) -> Res<Area<'a>> {
    let root = root.titled(title, (FONT, 24))?;
    let (top, body) = root.split_vertically(24);
    top.draw(&Text::new(
        format!("{}. {note}", r.setting),
        (12, 2),
        (FONT, 14).into_font().color(&BLACK.mix(0.75)),
    ))?;
    Ok(body)
}

/// The series' legend, boxed, at `position`.
fn draw_legend<'a, 'b: 'a, CT: plotters::coord::CoordTranslate>(
    chart: &mut ChartContext<'a, BitMapBackend<'b>, CT>,
    position: SeriesLabelPosition,
    font_size: u32,
) -> Res<()> {
    chart
        .configure_series_labels()
        .position(position)
        .label_font((FONT, font_size))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .draw()?;
    Ok(())
}

/// A bar's place: its group along x, its variant (colour) within the group.
trait Bar {
    fn group(&self) -> &str;
    fn variant(&self) -> &str;
}

impl Bar for ElementPoint {
    fn group(&self) -> &str {
        &self.group
    }
    fn variant(&self) -> &str {
        &self.variant
    }
}

impl Bar for DecoderArm {
    fn group(&self) -> &str {
        &self.case
    }
    fn variant(&self) -> &str {
        &self.variant
    }
}

/// The distinct groups and variants of `bars`, in order of appearance.
fn groups_and_variants(bars: &[impl Bar]) -> (Vec<String>, Vec<String>) {
    let (mut groups, mut variants): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
    for bar in bars {
        if !groups.iter().any(|g| g == bar.group()) {
            groups.push(bar.group().to_string());
        }
        if !variants.iter().any(|v| v == bar.variant()) {
            variants.push(bar.variant().to_string());
        }
    }
    (groups, variants)
}

/// The bars of `variant`, each with the index of its group in `groups`.
fn bars_of<'a, B: Bar>(bars: &'a [B], groups: &[String], variant: &str) -> Vec<(usize, &'a B)> {
    bars.iter()
        .filter(|b| b.variant() == variant)
        .filter_map(|b| Some((groups.iter().position(|g| g == b.group())?, b)))
        .collect()
}

fn plot_element(root: &Area, r: &Results) -> Res<()> {
    let body = titled(
        root,
        "vmemexport alone: time per frame inside the element (log scale)",
        r,
        "Bar: median of the runs; whisker: min..max; above the red bar: copy / zero-copy.",
    )?;
    let (groups, variants) = groups_and_variants(&r.element);
    let lo = r.element.iter().map(|p| p.min).fold(f64::MAX, f64::min);
    let hi = r.element.iter().map(|p| p.max).fold(0.0, f64::max);
    let y = decades(lo, hi);
    let floor = y.start;
    let mut chart = time_chart(&body, "", &groups, y, "time per frame")?;
    for (vi, variant) in variants.iter().enumerate() {
        let (label, color) = match variant.as_str() {
            "zero-copy" => ("zero-copy (the default)", GREEN),
            "zero-copy-nosync" => ("zero-copy, sync=false", LIGHT_GREEN),
            "copy" => ("copy fallback (propose-pool=false)", RED),
            "identity" => ("identity in its place (the floor)", GREY),
            other => (other, BLUE),
        };
        let bars = bars_of(&r.element, &groups, variant);
        let nv = variants.len();
        chart
            .draw_series(bars.iter().map(|&(gi, p)| {
                let (x0, x1, _) = bar_x(gi, vi, nv);
                Rectangle::new([(x0, floor), (x1, p.median)], color.filled())
            }))?
            .label(label)
            .legend(legend_box(color));
        chart.draw_series(bars.iter().map(|&(gi, p)| {
            let x = bar_x(gi, vi, nv).2;
            PathElement::new(vec![(x, p.min), (x, p.max)], BLACK.stroke_width(1))
        }))?;
    }
    // copy / zero-copy above each group's copy bar: the point of the plot in one number.
    let median = |g: &str, v: &str| {
        r.element
            .iter()
            .find(|p| p.group == g && p.variant == v)
            .map(|p| p.median)
    };
    if let Some(ci) = variants.iter().position(|v| v == "copy") {
        let style = text_above(14, RED);
        for (gi, g) in groups.iter().enumerate() {
            if let (Some(zc), Some(cp)) = (median(g, "zero-copy"), median(g, "copy")) {
                let max = r
                    .element
                    .iter()
                    .find(|p| p.group == *g && p.variant == "copy")
                    .map_or(cp, |p| p.max);
                let x = bar_x(gi, ci, variants.len()).2;
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.1}x", cp / zc),
                    (x, max * 1.15),
                    style.clone(),
                )))?;
            }
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperLeft, 14)?;
    Ok(())
}

fn plot_end_to_end(root: &Area, r: &Results) -> Res<()> {
    let body = titled(
        root,
        "End to end at 1280x720: CPU time per frame of the whole process (log scale)",
        r,
        "Median of the runs; above each pair: upstream / ours.",
    )?;
    let (left, right) = body.split_horizontally(body.dim_in_pixel().0 * 56 / 100);
    let groups: Vec<String> = r.end_to_end.iter().map(|c| c.case.clone()).collect();
    let whole = |c: &EndToEnd| [c.upstream, c.ours, c.producer];
    // Transfer only: the producer's own cost (videotestsrc ! fakesink) subtracted; noise can
    // make it zero or negative, which a log axis cannot show: such bars are labelled instead.
    let transfer = |c: &EndToEnd| [c.upstream - c.producer, c.ours - c.producer, f64::NAN];
    let series = [
        ("upstream (copies into the consumer's buffers)", RED),
        ("ours (vmemexport, zero-copy)", GREEN),
        ("producer alone (videotestsrc ! fakesink)", GREY),
    ];
    for (area, title, values, legend) in [
        (
            &left,
            "the whole process",
            &whole as &dyn Fn(&EndToEnd) -> [f64; 3],
            true,
        ),
        (
            &right,
            "transfer only: the producer alone subtracted",
            &transfer,
            false,
        ),
    ] {
        let all: Vec<f64> = r
            .end_to_end
            .iter()
            .flat_map(values)
            .filter(|v| *v > 0.0)
            .collect();
        if all.is_empty() {
            continue;
        }
        let lo = all.iter().copied().fold(f64::MAX, f64::min);
        let hi = all.iter().copied().fold(0.0, f64::max);
        let y = decades(lo, hi);
        let floor = y.start;
        let mut chart = time_chart(area, title, &groups, y, "CPU time per frame")?;
        let label_style = text_above(13, BLACK);
        // The transfer-only panel has no producer bar: its pairs take the whole group.
        let slots = (0..series.len())
            .filter(|&si| r.end_to_end.iter().any(|c| !values(c)[si].is_nan()))
            .count();
        for (si, &(label, color)) in series.iter().enumerate() {
            let bars: Vec<(usize, f64)> = r
                .end_to_end
                .iter()
                .enumerate()
                .map(|(gi, c)| (gi, values(c)[si]))
                .filter(|(_, v)| !v.is_nan())
                .collect();
            if bars.is_empty() {
                continue;
            }
            let drawn =
                chart.draw_series(bars.iter().filter(|(_, v)| *v > 0.0).map(|&(gi, v)| {
                    let (x0, x1, _) = bar_x(gi, si, slots);
                    Rectangle::new([(x0, floor), (x1, v)], color.filled())
                }))?;
            if legend {
                drawn.label(label).legend(legend_box(color));
            }
            chart.draw_series(bars.iter().map(|&(gi, v)| {
                let x = bar_x(gi, si, slots).2;
                if v > 0.0 {
                    Text::new(human_us(v), (x, v * 1.08), label_style.clone())
                } else {
                    Text::new("<= 0".to_string(), (x, floor * 1.3), label_style.clone())
                }
            }))?;
        }
        let ratio_style = text_above(15, BLUE);
        for (gi, c) in r.end_to_end.iter().enumerate() {
            let [up, ours, _] = values(c);
            if up > 0.0 && ours > 0.0 {
                chart.draw_series(std::iter::once(Text::new(
                    format!("{:.2}x", up / ours),
                    (
                        (bar_x(gi, 0, slots).0 + bar_x(gi, 1, slots).1) / 2,
                        up.max(ours) * 1.8,
                    ),
                    ratio_style.clone(),
                )))?;
            }
        }
        if legend {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 14)?;
        }
    }
    Ok(())
}

fn plot_decoder(root: &Area, r: &Results) -> Res<()> {
    let body = titled(
        root,
        "avdec_h264 1280x720 into a display and an encoder: upstream's copy path vs vmemexport",
        r,
        "Each arm in a process of its own; CPU: median of the runs; copies and memory: GST_PERFORMANCE, VmHWM.",
    )?;
    let (groups, variants) = groups_and_variants(&r.decoder);
    let color = |v: &str| match v {
        "upstream" => RED,
        "ours" => GREEN,
        _ => BLUE,
    };
    let label = |v: &str| match v {
        "upstream" => "upstream (copy path)".to_string(),
        "ours" => "vmemexport".to_string(),
        "ours-copy" => "vmemexport, copy fallback".to_string(),
        other => other.to_string(),
    };
    let panels = body.split_evenly((1, 3));
    let metrics = [
        ("CPU time per frame", "ms"),
        ("bytes copied per frame (as GStreamer logs them)", "MiB"),
        ("peak RSS", "MiB"),
    ];
    for (mi, (area, (title, unit))) in panels.iter().zip(metrics).enumerate() {
        let hi = r
            .decoder
            .iter()
            .filter_map(|a| a.figures.map(|f| f[mi]))
            .fold(0.0, f64::max);
        let top = if hi > 0.0 { hi * 1.25 } else { 1.0 };
        let mut chart = bar_chart(area, title, &groups, 0.0..top, unit, None, NARROW)?;
        let value_style = text_above(13, BLACK);
        for (vi, variant) in variants.iter().enumerate() {
            let c = color(variant);
            let arms = bars_of(&r.decoder, &groups, variant);
            let drawn = chart.draw_series(arms.iter().filter_map(|&(gi, a)| {
                let v = a.figures?[mi];
                let (x0, x1, _) = bar_x(gi, vi, variants.len());
                Some(Rectangle::new([(x0, 0.0), (x1, v)], c.filled()))
            }))?;
            if mi == 0 {
                drawn.label(label(variant)).legend(legend_box(c));
            }
            chart.draw_series(arms.iter().map(|&(gi, a)| {
                let x = bar_x(gi, vi, variants.len()).2;
                match a.figures {
                    Some(f) => Text::new(format!("{:.1}", f[mi]), (x, f[mi]), value_style.clone()),
                    None => Text::new("failed".to_string(), (x, 0.0), value_style.clone()),
                }
            }))?;
        }
        if mi == 0 {
            draw_legend(&mut chart, SeriesLabelPosition::UpperRight, 13)?;
        }
    }
    Ok(())
}
