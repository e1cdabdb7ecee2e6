//! The six plots. Two chart shapes cover all of them: lines over cycles with status markers,
//! and stacked bars over cycles.
//!
//! Every plot shares one x domain (all cycles of the run), so the plots line up vertically and
//! a cycle sits at the same horizontal position in each.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::svg::{self, Axis, Frame, LegendEntry, MarkerStyle, Scale, Swatch, c, esc};
use crate::{ReportData, Warnings};

pub const WIDTH: f64 = 1100.0;
pub const FRAME: Frame = Frame {
    left: 78.0,
    top: 24.0,
    width: 740.0,
    height: 260.0,
};
const LEGEND_X: f64 = 850.0;
/// Room under the plot area for tick labels and the axis label.
const BELOW: f64 = 52.0;

/// A line is reduced to at most four points (first, min, max, last) per this many pixel
/// columns: the drawn shape, extremes included, is the same as with every point, while a run
/// of 10,000 cycles no longer writes 10,000 path vertices per suite.
pub const LINE_BUCKETS: usize = 300;
/// Markers are thinned more coarsely, to the lowest and highest per column, since each one is
/// an element (with a tooltip) rather than a few bytes of a path.
pub const MARKER_BUCKETS: usize = 100;
/// Bars: at most this many per chart; beyond it, consecutive cycles share one bar.
pub const MAX_BARS: u32 = 200;

pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
    "#393b79", "#7f7f7f",
];
pub const REJECTED: &str = "#d62728";
const OTHER: &str = "#8a8a8a";
const DASH: &str = "6 4";

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// How a cycle's point is drawn: filled for the trajectory, hollow for a rejected candidate, a
/// red cross for a failed cycle, hollow grey for a running or unknown one. Only accepted cycles (and the base, cycle 0) are the model's
/// trajectory, so only they are joined by the line; a rejected candidate's score is shown as a
/// hollow marker off the line, because joining it would draw a dip the model never had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Lineage,
    Rejected,
    Failed,
    Other,
}

impl Kind {
    fn style(self, series_color: &str) -> MarkerStyle<'_> {
        match self {
            Kind::Lineage => MarkerStyle::Filled {
                color: series_color,
            },
            // Hollow in the series colour rather than uniformly red: with several suites, a
            // red ring cannot say which suite's candidate it was.
            Kind::Rejected => MarkerStyle::Hollow {
                stroke: series_color,
            },
            Kind::Failed => MarkerStyle::Cross { stroke: REJECTED },
            Kind::Other => MarkerStyle::Hollow { stroke: OTHER },
        }
    }
    fn legend(self) -> LegendEntry<'static> {
        match self {
            Kind::Lineage => LegendEntry {
                swatch: Swatch::Marker(MarkerStyle::Filled { color: "#444" }),
                label: "accepted (joined by the line)".into(),
            },
            Kind::Rejected => LegendEntry {
                swatch: Swatch::Marker(MarkerStyle::Hollow { stroke: "#444" }),
                label: "rejected candidate (hollow)".into(),
            },
            Kind::Failed => LegendEntry {
                swatch: Swatch::Marker(MarkerStyle::Cross { stroke: REJECTED }),
                label: "failed cycle".into(),
            },
            Kind::Other => LegendEntry {
                swatch: Swatch::Marker(MarkerStyle::Hollow { stroke: OTHER }),
                label: "running / status unknown".into(),
            },
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Lineage => "accepted",
            Kind::Rejected => "rejected",
            Kind::Failed => "failed",
            Kind::Other => "running/unknown",
        }
    }
}

/// Facts shared by every plot: the common x domain and each cycle's status.
pub struct Ctx<'a> {
    pub x_lo: f64,
    pub x_hi: f64,
    status: HashMap<u32, &'a str>,
    failed: Vec<u32>,
}

impl<'a> Ctx<'a> {
    pub fn new(d: &'a ReportData) -> Ctx<'a> {
        let all = d
            .cycles
            .iter()
            .map(|c| c.cycle)
            .chain(d.suites.iter().map(|p| p.cycle))
            .chain(d.refusal.iter().map(|p| p.cycle))
            .chain(d.proxy_gap.iter().map(|p| p.cycle))
            .chain(d.training_mix.iter().map(|p| p.cycle))
            .chain(d.compression.iter().map(|p| p.cycle))
            .chain(d.budget.iter().map(|p| p.cycle));
        let (lo, hi) = all.fold((u32::MAX, 0u32), |(lo, hi), c| (lo.min(c), hi.max(c)));
        let (lo, hi) = if lo > hi { (0, 0) } else { (lo, hi) };
        Ctx {
            // Half a cycle of margin so the first and last bars are not cut in half.
            x_lo: lo as f64 - 0.5,
            x_hi: hi as f64 + 0.5,
            status: d
                .cycles
                .iter()
                .map(|c| (c.cycle, c.status.as_str()))
                .collect(),
            failed: {
                let mut f: Vec<u32> = d
                    .cycles
                    .iter()
                    .filter(|c| c.status == "failed")
                    .map(|c| c.cycle)
                    .collect();
                f.sort_unstable();
                f.dedup();
                f
            },
        }
    }

    pub fn kind(&self, cycle: u32) -> Kind {
        match self.status.get(&cycle).copied() {
            _ if cycle == 0 => Kind::Lineage,
            Some("accepted") => Kind::Lineage,
            Some("rejected") => Kind::Rejected,
            Some("failed") => Kind::Failed,
            _ => Kind::Other,
        }
    }

    pub fn status(&self, cycle: u32) -> &str {
        self.status.get(&cycle).copied().unwrap_or("")
    }

    pub fn x_scale(&self, f: &Frame) -> Scale {
        Scale::new(self.x_lo, self.x_hi, f.left, f.right())
    }

    /// Failed cycles usually have no measurements at all, so without this they would be
    /// invisible in a line plot. They are drawn as short red ticks just above the plot area,
    /// as one path (at most one tick per pixel column, so length is bounded).
    fn failed_rug(&self, out: &mut String, f: &Frame) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        let x = self.x_scale(f);
        let mut cols: Vec<i64> = self
            .failed
            .iter()
            .map(|c| x.map(*c as f64).round() as i64)
            .collect();
        cols.dedup();
        let mut d = String::new();
        for px in cols {
            let _ = write!(d, "M{px} {}v7", c(f.top - 10.0));
        }
        let shown: Vec<String> = self.failed.iter().take(20).map(u32::to_string).collect();
        let more = if self.failed.len() > 20 {
            format!(" … ({} in all)", self.failed.len())
        } else {
            String::new()
        };
        let _ = write!(
            out,
            "<path class=\"failed-rug\" d=\"{d}\" stroke=\"{REJECTED}\" stroke-width=\"1.5\"><title>failed cycles: {}{more}</title></path>",
            shown.join(", ")
        );
        true
    }

    fn x_axis<'b>(&self, f: &Frame, label: &'b str) -> Axis<'b> {
        let ticks = svg::nice_ticks(self.x_lo, self.x_hi, 10, true);
        Axis {
            scale: self.x_scale(f),
            ticks,
            label,
            fmt: &|v| svg::fmt_num(v),
        }
    }
}

fn open_svg(out: &mut String, id: &str, title: &str, height: f64) {
    let _ = write!(
        out,
        "<svg id=\"{id}\" class=\"plot\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {} {}\" \
         width=\"{}\" height=\"{}\" role=\"img\" aria-labelledby=\"{id}-title\" font-family=\"DejaVu Sans, Liberation Sans, Arial, sans-serif\">\
         <title id=\"{id}-title\">{}</title>",
        WIDTH,
        c(height),
        WIDTH,
        c(height),
        esc(title)
    );
}

fn no_data_svg(id: &str, title: &str, message: &str) -> String {
    let mut out = String::new();
    let h = FRAME.top + FRAME.height / 2.0 + 20.0;
    open_svg(&mut out, id, title, h);
    let f = Frame {
        height: FRAME.height / 2.0,
        ..FRAME
    };
    svg::no_data(
        &mut out,
        &Frame {
            width: WIDTH - 2.0 * f.left,
            ..f
        },
        message,
    );
    out.push_str("</svg>");
    out
}

/// One point of a line series. `dashed` styles the segment that ends at this point, which lets
/// a suite's line switch from dashed (frontier) to solid (mastered) where its role changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pt {
    pub cycle: u32,
    pub value: f64,
    pub dashed: bool,
    /// An integrity alarm (a codec that was not lossless): drawn as a red cross whatever the
    /// cycle's status.
    pub alarm: bool,
}

pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<Pt>,
}

/// Keeps, for each of `buckets` equal pixel columns, the first, lowest, highest and last point
/// (in cycle order), or with `ends == false` only the lowest and highest. `points` must be
/// sorted by cycle.
pub fn thin(points: &[Pt], x: &Scale, buckets: usize, ends: bool) -> Vec<Pt> {
    let per = if ends { 4 } else { 2 };
    if points.len() <= per * buckets {
        return points.to_vec();
    }
    let (r0, r1) = (x.r0.min(x.r1), x.r0.max(x.r1));
    let col = |p: &Pt| {
        let t = ((x.map(p.cycle as f64) - r0) / (r1 - r0) * buckets as f64).floor();
        t.clamp(0.0, buckets as f64 - 1.0) as usize
    };
    let mut out = Vec::with_capacity(4 * buckets);
    let mut start = 0;
    while start < points.len() {
        let b = col(&points[start]);
        let mut end = start;
        while end < points.len() && col(&points[end]) == b {
            end += 1;
        }
        let run = &points[start..end];
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in run.iter().enumerate() {
            if p.value < run[lo].value {
                lo = i;
            }
            if p.value > run[hi].value {
                hi = i;
            }
        }
        let mut keep = if ends {
            vec![0, lo, hi, run.len() - 1]
        } else {
            vec![lo, hi]
        };
        keep.sort_unstable();
        keep.dedup();
        out.extend(keep.into_iter().map(|i| run[i]));
        start = end;
    }
    out
}

pub struct YSpec<'a> {
    pub label: &'a str,
    /// The domain always includes this range (e.g. 0..1 for rates), and grows to include any
    /// value outside it, so an out-of-range value is visible rather than drawn off the plot.
    pub include: Option<(f64, f64)>,
    pub fmt: &'a dyn Fn(f64) -> String,
    pub value_fmt: &'a dyn Fn(f64) -> String,
}

/// A line chart with status markers. Returns the `<svg>` and a note when points were thinned.
pub fn line_chart(
    ctx: &Ctx,
    id: &str,
    title: &str,
    series: &[Series],
    y: &YSpec,
    extra_legend: Vec<LegendEntry<'static>>,
) -> (String, Option<String>) {
    let f = FRAME;
    let values = series.iter().flat_map(|s| s.points.iter().map(|p| p.value));
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if let Some((a, b)) = y.include {
        lo = lo.min(a);
        hi = hi.max(b);
    } else if hi > lo {
        // A free domain is padded so the extreme points do not sit on the frame.
        let pad = (hi - lo) * 0.05;
        lo -= pad;
        hi += pad;
    }
    let (lo, hi) = svg::nice_domain(lo, hi, 5);
    let y_scale = Scale::new(lo, hi, f.bottom(), f.top);
    let x_axis = ctx.x_axis(&f, "cycle");
    let x = x_axis.scale;
    let y_axis = Axis {
        scale: y_scale,
        ticks: svg::nice_ticks(lo, hi, 5, false),
        label: y.label,
        fmt: y.fmt,
    };

    let mut body = String::new();
    svg::axes(&mut body, &f, &x_axis, &y_axis);
    let (mut total, mut shown) = (0usize, 0usize);
    let mut kinds_seen = Vec::new();
    let mut any_alarm = false;
    let rug = ctx.failed_rug(&mut body, &f);
    for s in series {
        let mut pts = s.points.clone();
        pts.sort_by_key(|p| p.cycle);
        total += pts.len();
        let mut by_kind: BTreeMap<Kind, Vec<Pt>> = BTreeMap::new();
        for p in &pts {
            by_kind.entry(ctx.kind(p.cycle)).or_default().push(*p);
        }
        let _ = write!(
            body,
            "<g class=\"series\" data-label=\"{}\">",
            esc(&s.label)
        );
        if let Some(line) = by_kind.get(&Kind::Lineage) {
            let line = thin(line, &x, LINE_BUCKETS, true);
            shown += line.len();
            path_segments(&mut body, &line, &x, &y_scale, s.color);
        }
        for (kind, group) in &by_kind {
            if !kinds_seen.contains(kind) {
                kinds_seen.push(*kind);
            }
            // Where there are more points than marker slots, markers would bury the line: the
            // trajectory's own markers are left out (the line carries them) and the others
            // are drawn smaller.
            let dense = group.len() > 2 * MARKER_BUCKETS;
            if dense && *kind == Kind::Lineage {
                continue;
            }
            let r = if dense {
                svg::MARKER_R * 0.6
            } else {
                svg::MARKER_R
            };
            let marks = thin(group, &x, MARKER_BUCKETS, false);
            if *kind != Kind::Lineage {
                shown += marks.len();
            }
            let _ = write!(body, "<g class=\"markers {}\">", kind.name());
            for p in &marks {
                let style = if p.alarm {
                    MarkerStyle::Cross { stroke: REJECTED }
                } else {
                    kind.style(s.color)
                };
                any_alarm |= p.alarm;
                let tip = format!(
                    "{} · cycle {}: {} ({})",
                    s.label,
                    p.cycle,
                    (y.value_fmt)(p.value),
                    if ctx.status(p.cycle).is_empty() {
                        "no cycle row"
                    } else {
                        ctx.status(p.cycle)
                    }
                );
                svg::marker(
                    &mut body,
                    x.map(p.cycle as f64),
                    y_scale.map(p.value),
                    r,
                    &style,
                    Some(&tip),
                );
            }
            body.push_str("</g>");
        }
        body.push_str("</g>");
    }

    let mut entries: Vec<LegendEntry<'static>> = series
        .iter()
        .map(|s| {
            // A series drawn dashed throughout (a frontier suite, a calibration error) gets a
            // dashed swatch; a mixed one is solid and the role entries explain the dashes.
            let all_dashed = !s.points.is_empty() && s.points.iter().all(|p| p.dashed);
            LegendEntry {
                swatch: Swatch::Line {
                    color: s.color,
                    dash: all_dashed.then_some(DASH),
                },
                label: s.label.clone(),
            }
        })
        .collect();
    entries.extend(extra_legend);
    kinds_seen.sort();
    entries.extend(kinds_seen.into_iter().map(Kind::legend));
    if rug {
        entries.push(LegendEntry {
            swatch: Swatch::Line {
                color: REJECTED,
                dash: None,
            },
            label: "failed cycle (tick above the plot)".into(),
        });
    }
    if any_alarm {
        entries.push(LegendEntry {
            swatch: Swatch::Marker(MarkerStyle::Cross { stroke: REJECTED }),
            label: "NOT lossless".into(),
        });
    }
    let mut legend = String::new();
    let bottom = svg::legend(&mut legend, LEGEND_X, f.top + 4.0, None, &entries);
    let height = (f.bottom() + BELOW).max(bottom + 8.0);
    let mut out = String::new();
    open_svg(&mut out, id, title, height);
    out.push_str(&body);
    out.push_str(&legend);
    out.push_str("</svg>");
    let note = (shown < total).then(|| {
        format!("{total} points; {shown} drawn (per pixel column the first, lowest, highest and last are kept).")
    });
    (out, note)
}

/// Writes the line as `<path>`s, one per run of equally styled segments.
fn path_segments(out: &mut String, pts: &[Pt], x: &Scale, y: &Scale, color: &str) {
    if pts.len() < 2 {
        return;
    }
    let mut i = 1;
    while i < pts.len() {
        let dashed = pts[i].dashed;
        let mut d = format!(
            "M{} {}",
            c(x.map(pts[i - 1].cycle as f64)),
            c(y.map(pts[i - 1].value))
        );
        while i < pts.len() && pts[i].dashed == dashed {
            let _ = write!(
                d,
                "L{} {}",
                c(x.map(pts[i].cycle as f64)),
                c(y.map(pts[i].value))
            );
            i += 1;
        }
        let _ = write!(
            out,
            "<path class=\"line{}\" d=\"{d}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" stroke-linejoin=\"round\"{}/>",
            if dashed { " dashed" } else { "" },
            if dashed {
                format!(" stroke-dasharray=\"{DASH}\"")
            } else {
                String::new()
            }
        );
    }
}

/// One bar: the cycles it covers and one value per stack layer.
pub struct Bar {
    pub lo: u32,
    pub hi: u32,
    pub values: Vec<f64>,
}

/// Groups per-cycle values into at most [`MAX_BARS`] bars of consecutive cycles. The values of
/// the cycles in one bar are summed (costs add up) or, with `mean`, averaged (shares do not).
/// Returns the bars and how many cycles each covers.
pub fn bucket(
    ctx: &Ctx,
    per_cycle: &BTreeMap<u32, Vec<f64>>,
    layers: usize,
    mean: bool,
) -> (Vec<Bar>, u32) {
    let lo = (ctx.x_lo + 0.5) as u32;
    let span = (ctx.x_hi - ctx.x_lo) as u32;
    let width = span.div_ceil(MAX_BARS).max(1);
    let mut bars: BTreeMap<u32, (Vec<f64>, u32)> = BTreeMap::new();
    for (cycle, vals) in per_cycle {
        let k = (cycle - lo) / width;
        let e = bars.entry(k).or_insert_with(|| (vec![0.0; layers], 0));
        for (acc, v) in e.0.iter_mut().zip(vals) {
            *acc += v;
        }
        e.1 += 1;
    }
    let bars = bars
        .into_iter()
        .map(|(k, (mut values, n))| {
            if mean {
                values.iter_mut().for_each(|v| *v /= n as f64);
            }
            Bar {
                lo: lo + k * width,
                hi: lo + k * width + width - 1,
                values,
            }
        })
        .collect();
    (bars, width)
}

/// Draws one panel of stacked bars, with its axes, into `f` of an `<svg>` the caller opened.
#[allow(clippy::too_many_arguments)]
pub fn bar_panel(
    out: &mut String,
    ctx: &Ctx,
    f: &Frame,
    bars: &[Bar],
    layers: &[(String, &str)],
    y_label: &str,
    y_max: Option<f64>,
    fmt: &dyn Fn(f64) -> String,
) {
    let top = bars
        .iter()
        .map(|b| b.values.iter().sum::<f64>())
        .fold(0.0, f64::max);
    let hi = y_max.unwrap_or(if top > 0.0 {
        svg::nice_domain(0.0, top, 5).1
    } else {
        1.0
    });
    let y = Scale::new(0.0, hi, f.bottom(), f.top);
    let x_axis = ctx.x_axis(f, "cycle");
    let x = x_axis.scale;
    let y_axis = Axis {
        scale: y,
        ticks: svg::nice_ticks(0.0, hi, 5, false),
        label: y_label,
        fmt,
    };
    svg::axes(out, f, &x_axis, &y_axis);
    out.push_str("<g class=\"bars\">");
    for b in bars {
        let (x0, x1) = (x.map(b.lo as f64 - 0.5), x.map(b.hi as f64 + 0.5));
        // A small gap between bars when there is room for one, so neighbours stay distinct.
        let gap = if x1 - x0 > 4.0 {
            ((x1 - x0) * 0.15).min(6.0)
        } else {
            0.0
        };
        let (bx, bw) = (x0 + gap / 2.0, (x1 - x0 - gap).max(0.5));
        let mut acc = 0.0;
        let cycles = if b.lo == b.hi {
            format!("cycle {}", b.lo)
        } else {
            format!("cycles {}–{}", b.lo, b.hi)
        };
        for (v, (name, color)) in b.values.iter().zip(layers) {
            if *v <= 0.0 {
                continue;
            }
            let (y0, y1) = (y.map(acc), y.map(acc + v));
            acc += v;
            let _ = write!(
                out,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>{} · {}: {}</title></rect>",
                c(bx),
                c(y1),
                c(bw),
                c((y0 - y1).max(0.0)),
                color,
                esc(name),
                cycles,
                esc(&fmt(*v))
            );
        }
    }
    out.push_str("</g>");
}

/// One stacked-bar panel of a chart; the budget chart has two sharing a legend.
pub struct Panel<'a> {
    pub bars: Vec<Bar>,
    pub y_label: &'a str,
    /// A fixed top of the y axis (1.0 for shares); otherwise the tallest stack, rounded up.
    pub y_max: Option<f64>,
    pub fmt: &'a dyn Fn(f64) -> String,
}

pub fn bar_chart(
    ctx: &Ctx,
    id: &str,
    title: &str,
    panels: Vec<Panel>,
    layers: &[(String, &'static str)],
    legend_title: &str,
) -> String {
    let mut body = String::new();
    let mut y = 0.0;
    for p in &panels {
        let f = Frame {
            top: FRAME.top + y,
            ..FRAME
        };
        bar_panel(
            &mut body, ctx, &f, &p.bars, layers, p.y_label, p.y_max, p.fmt,
        );
        y += FRAME.height + BELOW + 10.0;
    }
    let entries: Vec<LegendEntry> = layers
        .iter()
        .map(|(name, color)| LegendEntry {
            swatch: Swatch::Box { color },
            label: name.clone(),
        })
        .collect();
    let mut legend = String::new();
    let bottom = svg::legend(
        &mut legend,
        LEGEND_X,
        FRAME.top + 4.0,
        Some(legend_title),
        &entries,
    );
    let height = (FRAME.top + y).max(bottom + 8.0);
    let mut out = String::new();
    open_svg(&mut out, id, title, height);
    out.push_str(&body);
    out.push_str(&legend);
    out.push_str("</svg>");
    out
}

// ---- the six plots ----------------------------------------------------------------------

/// Drops non-finite values with a warning: NaN cannot be placed on an axis, and silently
/// plotting it at 0 would be a lie.
fn finite(v: f64, what: &str, cycle: u32, w: &mut Warnings) -> Option<f64> {
    if v.is_finite() {
        Some(v)
    } else {
        w.note(format!(
            "{what}: cycle {cycle} has a non-finite value ({v}); not plotted"
        ));
        None
    }
}

pub fn accuracy(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> (String, Option<String>) {
    const ID: &str = "plot-accuracy";
    const TITLE: &str = "Accuracy per suite over cycles";
    if d.suites.is_empty() {
        return (
            no_data_svg(ID, TITLE, "No evaluation results recorded for this run"),
            None,
        );
    }
    // Series keyed by suite name; the first-seen order is kept so colours are stable.
    let mut order: Vec<&str> = Vec::new();
    let mut pts: HashMap<&str, (Vec<Pt>, &str)> = HashMap::new();
    for p in &d.suites {
        let Some(v) = finite(p.accuracy, &format!("accuracy of {}", p.suite), p.cycle, w) else {
            continue;
        };
        let e = pts.entry(&p.suite).or_insert_with(|| {
            order.push(&p.suite);
            (Vec::new(), &p.skill)
        });
        e.0.push(Pt {
            cycle: p.cycle,
            value: v,
            dashed: p.role != "mastered",
            alarm: false,
        });
    }
    let series: Vec<Series> = order
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let (points, skill) = pts.remove(name).unwrap_or_default();
            let label = if *skill == **name || skill.is_empty() {
                name.to_string()
            } else {
                format!("{name} ({skill})")
            };
            Series {
                label,
                color: color(i),
                points,
            }
        })
        .collect();
    let extra = vec![
        LegendEntry {
            swatch: Swatch::Line {
                color: "#444",
                dash: None,
            },
            label: "role: mastered".into(),
        },
        LegendEntry {
            swatch: Swatch::Line {
                color: "#444",
                dash: Some(DASH),
            },
            label: "role: frontier".into(),
        },
    ];
    let y = YSpec {
        label: "accuracy",
        include: Some((0.0, 1.0)),
        fmt: &svg::fmt_pct,
        value_fmt: &svg::fmt_pct,
    };
    line_chart(ctx, ID, TITLE, &series, &y, extra)
}

pub fn refusal(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> (String, Option<String>) {
    const ID: &str = "plot-refusal";
    const TITLE: &str = "Refusal and over-refusal rate over cycles";
    let mut r = Vec::new();
    let mut o = Vec::new();
    for p in &d.refusal {
        if let Some(v) = p
            .refusal_rate
            .and_then(|v| finite(v, "refusal rate", p.cycle, w))
        {
            r.push(Pt {
                cycle: p.cycle,
                value: v,
                dashed: false,
                alarm: false,
            });
        }
        if let Some(v) = p
            .over_refusal_rate
            .and_then(|v| finite(v, "over-refusal rate", p.cycle, w))
        {
            o.push(Pt {
                cycle: p.cycle,
                value: v,
                dashed: false,
                alarm: false,
            });
        }
    }
    if r.is_empty() && o.is_empty() {
        return (
            no_data_svg(ID, TITLE, "No refusal evaluations recorded for this run"),
            None,
        );
    }
    let series = vec![
        Series {
            label: "refusal rate (higher is better)".into(),
            color: color(0),
            points: r,
        },
        Series {
            label: "over-refusal rate (lower is better)".into(),
            color: color(1),
            points: o,
        },
    ];
    let y = YSpec {
        label: "rate",
        include: Some((0.0, 1.0)),
        fmt: &svg::fmt_pct,
        value_fmt: &svg::fmt_pct,
    };
    line_chart(ctx, ID, TITLE, &series, &y, Vec::new())
}

pub fn proxy_gap(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> (String, Option<String>) {
    const ID: &str = "plot-proxy-gap";
    const TITLE: &str = "Proxy gap: discriminator AUC and calibration error over cycles";
    let mut order: Vec<&str> = Vec::new();
    let mut by_skill: HashMap<&str, (Vec<Pt>, Vec<Pt>)> = HashMap::new();
    for p in &d.proxy_gap {
        let e = by_skill.entry(&p.skill).or_insert_with(|| {
            order.push(&p.skill);
            (Vec::new(), Vec::new())
        });
        if let Some(v) = p
            .auc
            .and_then(|v| finite(v, &format!("AUC of {}", p.skill), p.cycle, w))
        {
            e.0.push(Pt {
                cycle: p.cycle,
                value: v,
                dashed: false,
                alarm: false,
            });
        }
        if let Some(v) = p
            .calibration_error
            .and_then(|v| finite(v, &format!("calibration error of {}", p.skill), p.cycle, w))
        {
            e.1.push(Pt {
                cycle: p.cycle,
                value: v,
                dashed: true,
                alarm: false,
            });
        }
    }
    if by_skill.values().all(|(a, b)| a.is_empty() && b.is_empty()) {
        return (
            no_data_svg(
                ID,
                TITLE,
                "No proxy-gap data recorded (no learned discriminator in this run)",
            ),
            None,
        );
    }
    let mut series = Vec::new();
    for (i, skill) in order.iter().enumerate() {
        let (auc, cal) = by_skill.remove(skill).unwrap_or_default();
        if !auc.is_empty() {
            series.push(Series {
                label: format!("{skill}: AUC"),
                color: color(i),
                points: auc,
            });
        }
        if !cal.is_empty() {
            series.push(Series {
                label: format!("{skill}: calibration error"),
                color: color(i),
                points: cal,
            });
        }
    }
    let extra = vec![
        LegendEntry {
            swatch: Swatch::Line {
                color: "#444",
                dash: None,
            },
            label: "AUC".into(),
        },
        LegendEntry {
            swatch: Swatch::Line {
                color: "#444",
                dash: Some(DASH),
            },
            label: "calibration error".into(),
        },
    ];
    let y = YSpec {
        label: "AUC / calibration error",
        include: Some((0.0, 1.0)),
        fmt: &|v| svg::trim(v, 2),
        value_fmt: &|v| svg::trim(v, 3),
    };
    line_chart(ctx, ID, TITLE, &series, &y, extra)
}

pub fn training_mix(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> String {
    const ID: &str = "plot-training-mix";
    const TITLE: &str = "Training mix: share of examples per skill per cycle";
    let mut skills: Vec<&str> = Vec::new();
    for p in &d.training_mix {
        if !skills.contains(&p.skill.as_str()) {
            skills.push(&p.skill);
        }
    }
    let mut totals: BTreeMap<u32, i64> = BTreeMap::new();
    for p in &d.training_mix {
        *totals.entry(p.cycle).or_default() += p.examples.max(0);
    }
    let mut per_cycle: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for p in &d.training_mix {
        if p.examples < 0 {
            w.note(format!(
                "training mix: cycle {} skill {} has negative examples ({}); drawn as 0",
                p.cycle, p.skill, p.examples
            ));
        }
        // The recorded share wins (it is what the ledger computed); it is derived from the
        // counts only when absent.
        let total = totals[&p.cycle];
        let share = match p.share {
            Some(s) if s.is_finite() && s >= 0.0 => s,
            Some(s) => {
                w.note(format!(
                    "training mix: cycle {} skill {} has an invalid share ({s}); drawn as 0",
                    p.cycle, p.skill
                ));
                0.0
            }
            None if total > 0 => p.examples.max(0) as f64 / total as f64,
            None => 0.0,
        };
        let i = skills.iter().position(|s| *s == p.skill).unwrap_or(0);
        per_cycle
            .entry(p.cycle)
            .or_insert_with(|| vec![0.0; skills.len()])[i] += share;
    }
    if per_cycle.is_empty() {
        return no_data_svg(ID, TITLE, "No training mix recorded for this run");
    }
    let (bars, width) = bucket(ctx, &per_cycle, skills.len(), true);
    let layers: Vec<(String, &'static str)> = skills
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), color(i)))
        .collect();
    let label = if width > 1 {
        format!("share (mean of {width} cycles)")
    } else {
        "share of examples".to_string()
    };
    bar_chart(
        ctx,
        ID,
        TITLE,
        vec![Panel {
            bars,
            y_label: &label,
            y_max: Some(1.0),
            fmt: &svg::fmt_pct,
        }],
        &layers,
        "skill",
    )
}

pub fn compression(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> (String, Option<String>) {
    const ID: &str = "plot-compression";
    const TITLE: &str = "Checkpoint compression ratio per codec over cycles";
    let mut order: Vec<&str> = Vec::new();
    let mut by_codec: HashMap<&str, Vec<Pt>> = HashMap::new();
    // Lossy rows are the quantized copies derived from each accepted checkpoint: expected, drawn
    // dashed and labelled, never an alarm (lineage always stays on the lossless checkpoint).
    let mut lossy: Vec<&str> = Vec::new();
    for p in &d.compression {
        if !p.lossless && !lossy.contains(&p.codec.as_str()) {
            lossy.push(&p.codec);
        }
        let Some(v) = p
            .ratio
            .and_then(|v| finite(v, &format!("compression ratio of {}", p.codec), p.cycle, w))
        else {
            continue;
        };
        by_codec
            .entry(&p.codec)
            .or_insert_with(|| {
                order.push(&p.codec);
                Vec::new()
            })
            .push(Pt {
                cycle: p.cycle,
                value: v,
                dashed: !p.lossless,
                alarm: false,
            });
    }
    if order.is_empty() {
        return (
            no_data_svg(ID, TITLE, "No compression results recorded for this run"),
            None,
        );
    }
    let series: Vec<Series> = order
        .iter()
        .enumerate()
        .map(|(i, codec)| Series {
            label: if lossy.contains(codec) { format!("{codec} (lossy copy)") } else { codec.to_string() },
            color: color(i),
            points: by_codec.remove(codec).unwrap_or_default(),
        })
        .collect();
    let y = YSpec {
        label: "ratio (raw / stored bytes)",
        include: None,
        fmt: &|v| svg::trim(v, 3),
        value_fmt: &|v| format!("{}×", svg::trim(v, 3)),
    };
    line_chart(ctx, ID, TITLE, &series, &y, Vec::new())
}

pub fn budget(ctx: &Ctx, d: &ReportData, w: &mut Warnings) -> String {
    const ID: &str = "plot-budget";
    const TITLE: &str = "Budget spent per role: busy seconds and cost per cycle";
    let mut roles: Vec<&str> = Vec::new();
    for p in &d.budget {
        if !roles.contains(&p.role.as_str()) {
            roles.push(&p.role);
        }
    }
    let mut busy: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    let mut cost: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
    for p in &d.budget {
        let i = roles.iter().position(|r| *r == p.role).unwrap_or(0);
        let mut ok = |v: f64, what: &str| {
            if v.is_finite() && v >= 0.0 {
                v
            } else {
                w.note(format!(
                    "budget: cycle {} role {} has invalid {what} ({v}); drawn as 0",
                    p.cycle, p.role
                ));
                0.0
            }
        };
        let (b, c) = (ok(p.busy_seconds, "busy seconds"), ok(p.cost_usd, "cost"));
        busy.entry(p.cycle)
            .or_insert_with(|| vec![0.0; roles.len()])[i] += b;
        cost.entry(p.cycle)
            .or_insert_with(|| vec![0.0; roles.len()])[i] += c;
    }
    if busy.is_empty() {
        return no_data_svg(ID, TITLE, "No budget accounting recorded for this run");
    }
    let (busy_bars, width) = bucket(ctx, &busy, roles.len(), false);
    let (cost_bars, _) = bucket(ctx, &cost, roles.len(), false);
    let layers: Vec<(String, &'static str)> = roles
        .iter()
        .enumerate()
        .map(|(i, s)| (s.to_string(), color(i)))
        .collect();
    let per = if width > 1 {
        format!(" per {width} cycles")
    } else {
        String::new()
    };
    let busy_label = format!("busy seconds{per}");
    let cost_label = format!("cost USD{per}");
    let usd = |v: f64| format!("${}", svg::fmt_num(v));
    bar_chart(
        ctx,
        ID,
        TITLE,
        vec![
            Panel {
                bars: busy_bars,
                y_label: &busy_label,
                y_max: None,
                fmt: &svg::fmt_num,
            },
            Panel {
                bars: cost_bars,
                y_label: &cost_label,
                y_max: None,
                fmt: &usd,
            },
        ],
        &layers,
        "role",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CyclePoint, MixPoint, SuitePoint};

    fn cycle(cycle: u32, status: &str) -> CyclePoint {
        CyclePoint {
            cycle,
            status: status.into(),
            checkpoint_hash: None,
            examples_trained: 10,
        }
    }

    fn suite(cycle: u32, accuracy: f64, role: &str) -> SuitePoint {
        SuitePoint {
            suite: "s".into(),
            skill: "k".into(),
            role: role.into(),
            cycle,
            accuracy,
        }
    }

    /// Pulls `name="…"` out of one element's source.
    fn attr(el: &str, name: &str) -> f64 {
        let key = format!(" {name}=\"");
        let start = el.find(&key).unwrap_or_else(|| panic!("no {name} in {el}")) + key.len();
        let end = start + el[start..].find('"').unwrap();
        el[start..end]
            .parse()
            .unwrap_or_else(|e| panic!("{name} in {el}: {e}"))
    }

    /// Every element starting with `prefix` in the plot (the legend's samples excluded), as
    /// source text up to its first `>`.
    fn elements<'a>(svg: &'a str, prefix: &str) -> Vec<&'a str> {
        let svg = &svg[..svg.find("<g class=\"legend\"").unwrap_or(svg.len())];
        svg.match_indices(prefix)
            .map(|(i, _)| &svg[i..i + svg[i..].find('>').unwrap()])
            .collect()
    }

    fn data(cycles: Vec<CyclePoint>, suites: Vec<SuitePoint>) -> ReportData {
        ReportData {
            cycles,
            suites,
            ..Default::default()
        }
    }

    #[test]
    fn accuracy_one_is_at_the_top_and_zero_at_the_bottom_of_the_plot_area() {
        let d = data(
            vec![cycle(0, "accepted"), cycle(1, "accepted")],
            vec![suite(0, 0.0, "mastered"), suite(1, 1.0, "mastered")],
        );
        let ctx = Ctx::new(&d);
        let (svg, note) = accuracy(&ctx, &d, &mut Warnings::default());
        assert!(note.is_none());
        let dots = elements(&svg, "<circle class=\"mk-filled\"");
        assert_eq!(dots.len(), 2);
        let x = ctx.x_scale(&FRAME);
        assert_eq!(
            (attr(dots[0], "cx"), attr(dots[0], "cy")),
            ((x.map(0.0) * 10.0).round() / 10.0, FRAME.bottom())
        );
        assert_eq!(
            (attr(dots[1], "cx"), attr(dots[1], "cy")),
            ((x.map(1.0) * 10.0).round() / 10.0, FRAME.top)
        );
        // Both points sit inside the plot area horizontally, half a cycle in from each edge.
        assert!(attr(dots[0], "cx") > FRAME.left && attr(dots[1], "cx") < FRAME.right());
        assert!(svg.starts_with("<svg id=\"plot-accuracy\""));
        assert!(
            svg.contains(
                "<title id=\"plot-accuracy-title\">Accuracy per suite over cycles</title>"
            )
        );
    }

    #[test]
    fn accepted_are_filled_rejected_hollow_failed_crossed_and_the_line_skips_rejected() {
        let d = data(
            vec![
                cycle(0, "accepted"),
                cycle(1, "rejected"),
                cycle(2, "accepted"),
                cycle(3, "failed"),
            ],
            vec![
                suite(0, 0.5, "mastered"),
                suite(1, 0.2, "mastered"),
                suite(2, 0.6, "mastered"),
                suite(3, 0.1, "mastered"),
            ],
        );
        let ctx = Ctx::new(&d);
        let (svg, _) = accuracy(&ctx, &d, &mut Warnings::default());
        let filled = elements(&svg, "<circle class=\"mk-filled\"");
        let hollow = elements(&svg, "<circle class=\"mk-hollow\"");
        let cross = elements(&svg, "<path class=\"mk-cross\"");
        assert_eq!(filled.len(), 2, "{svg}");
        assert_eq!(hollow.len(), 1, "{svg}");
        assert_eq!(cross.len(), 1, "{svg}");
        // The failed cycle also gets its tick above the plot area.
        let rug = elements(&svg, "<path class=\"failed-rug\"");
        assert_eq!(rug.len(), 1);
        assert!(
            rug[0].contains(&format!(
                "M{} {}v7",
                ctx.x_scale(&FRAME).map(3.0).round(),
                FRAME.top - 10.0
            )),
            "{}",
            rug[0]
        );
        let x = ctx.x_scale(&FRAME);
        let px = |c: f64| (x.map(c) * 10.0).round() / 10.0;
        assert_eq!(attr(hollow[0], "cx"), px(1.0));
        assert!(
            hollow[0].contains("fill=\"#fff\""),
            "rejected marker must be hollow: {}",
            hollow[0]
        );
        assert!(!filled[0].contains("fill=\"#fff\""));
        // The trajectory joins cycles 0 and 2 only: one segment, no vertex at cycle 1.
        let lines = elements(&svg, "<path class=\"line");
        assert_eq!(lines.len(), 1);
        let d_attr = &lines[0][lines[0].find(" d=\"").unwrap() + 4..];
        let d_attr = &d_attr[..d_attr.find('"').unwrap()];
        assert_eq!(d_attr.matches('L').count(), 1, "{d_attr}");
        assert!(!d_attr.contains(&svg::c(x.map(1.0))), "{d_attr}");
        assert!(d_attr.contains(&svg::c(x.map(2.0))), "{d_attr}");
    }

    #[test]
    fn a_role_change_switches_the_line_from_dashed_to_solid() {
        let d = data(
            (0..4).map(|c| cycle(c, "accepted")).collect(),
            vec![
                suite(0, 0.1, "frontier"),
                suite(1, 0.5, "frontier"),
                suite(2, 0.9, "mastered"),
                suite(3, 0.95, "mastered"),
            ],
        );
        let (svg, _) = accuracy(&Ctx::new(&d), &d, &mut Warnings::default());
        let dashed = elements(&svg, "<path class=\"line dashed\"");
        let solid = elements(&svg, "<path class=\"line\"");
        assert_eq!((dashed.len(), solid.len()), (1, 1), "{svg}");
        assert!(dashed[0].contains("stroke-dasharray"));
        assert!(!solid[0].contains("stroke-dasharray"));
    }

    #[test]
    fn thinning_bounds_the_points_and_keeps_the_extremes() {
        let pts: Vec<Pt> = (0..10_000)
            .map(|c| Pt {
                cycle: c,
                value: if c == 4321 {
                    9.0
                } else if c == 777 {
                    -3.0
                } else {
                    (c % 7) as f64
                },
                dashed: false,
                alarm: false,
            })
            .collect();
        let x = Scale::new(-0.5, 9999.5, FRAME.left, FRAME.right());
        let t = thin(&pts, &x, LINE_BUCKETS, true);
        assert!(t.len() <= 4 * LINE_BUCKETS, "{}", t.len());
        assert!(t.iter().any(|p| p.value == 9.0) && t.iter().any(|p| p.value == -3.0));
        assert_eq!(t.first().unwrap().cycle, 0);
        assert_eq!(t.last().unwrap().cycle, 9_999);
        assert!(
            t.windows(2).all(|w| w[0].cycle < w[1].cycle),
            "order kept, no duplicates"
        );
        // Short series are untouched.
        assert_eq!(thin(&pts[..50], &x, LINE_BUCKETS, true), pts[..50].to_vec());
        let m = thin(&pts, &x, MARKER_BUCKETS, false);
        assert!(m.len() <= 2 * MARKER_BUCKETS, "{}", m.len());
        assert!(m.iter().any(|p| p.value == 9.0) && m.iter().any(|p| p.value == -3.0));
    }

    #[test]
    fn mix_bars_stack_to_the_full_plot_height() {
        let d = ReportData {
            cycles: vec![cycle(1, "accepted")],
            training_mix: vec![
                MixPoint {
                    cycle: 1,
                    skill: "a".into(),
                    examples: 25,
                    share: None,
                },
                MixPoint {
                    cycle: 1,
                    skill: "b".into(),
                    examples: 75,
                    share: None,
                },
            ],
            ..Default::default()
        };
        let svg = training_mix(&Ctx::new(&d), &d, &mut Warnings::default());
        let rects = elements(&svg, "<rect x=");
        let rects: Vec<&str> = rects
            .into_iter()
            .filter(|r| r.contains("fill=\"#1f77b4\"") || r.contains("fill=\"#ff7f0e\""))
            .collect();
        let bars: Vec<&&str> = rects
            .iter()
            .filter(|r| !r.contains("width=\"14\""))
            .collect();
        assert_eq!(bars.len(), 2, "{svg}");
        let heights: Vec<f64> = bars.iter().map(|r| attr(r, "height")).collect();
        assert!(
            (heights.iter().sum::<f64>() - FRAME.height).abs() < 0.2,
            "{heights:?}"
        );
        assert!((heights[1] / heights[0] - 3.0).abs() < 0.01, "{heights:?}");
        // The bottom segment starts on the x axis; the top one ends at the top of the area.
        assert!((attr(bars[0], "y") + heights[0] - FRAME.bottom()).abs() < 0.2);
        assert!((attr(bars[1], "y") - FRAME.top).abs() < 0.2);
    }

    #[test]
    fn long_runs_are_bucketed_into_a_bounded_number_of_bars() {
        let d = ReportData {
            cycles: (0..10_000).map(|c| cycle(c, "accepted")).collect(),
            ..Default::default()
        };
        let ctx = Ctx::new(&d);
        let per_cycle: BTreeMap<u32, Vec<f64>> = (1..10_000).map(|c| (c, vec![1.0, 2.0])).collect();
        let (bars, width) = bucket(&ctx, &per_cycle, 2, false);
        assert!(
            bars.len() <= MAX_BARS as usize && width == 50,
            "{} bars of {width}",
            bars.len()
        );
        // Sums are preserved: every cycle lands in exactly one bar.
        let total: f64 = bars.iter().map(|b| b.values[0]).sum();
        assert_eq!(total, 9_999.0);
        let (means, _) = bucket(&ctx, &per_cycle, 2, true);
        assert!(means.iter().all(|b| b.values == vec![1.0, 2.0]));
    }

    #[test]
    fn empty_proxy_gap_is_a_labelled_panel_without_axes() {
        let d = data(vec![cycle(0, "accepted")], vec![]);
        let (svg, _) = proxy_gap(&Ctx::new(&d), &d, &mut Warnings::default());
        assert!(svg.starts_with("<svg id=\"plot-proxy-gap\""));
        assert!(svg.contains("class=\"no-data\"") && svg.contains("No proxy-gap data recorded"));
        assert!(
            !svg.contains("class=\"axis\""),
            "an empty plot must not draw an axis"
        );
    }

    #[test]
    fn non_finite_values_are_skipped_and_reported() {
        let d = data(
            vec![cycle(0, "accepted"), cycle(1, "accepted")],
            vec![suite(0, 0.5, "mastered"), suite(1, f64::NAN, "mastered")],
        );
        let mut w = Warnings::default();
        let (svg, _) = accuracy(&Ctx::new(&d), &d, &mut w);
        assert_eq!(elements(&svg, "<circle class=\"mk-filled\"").len(), 1);
        assert!(!svg.contains("NaN"));
        assert_eq!(w.notes().len(), 1);
        assert!(w.notes()[0].contains("cycle 1"), "{:?}", w.notes());
    }
}
