//! Hand-written SVG primitives: escaping, linear scales, "nice" ticks, axes and legends.
//!
//! Hand-written rather than `plotters` because the page must stay small and deterministic
//! (tests assert on exact geometry), and a plotting crate would cost far more compile time on a
//! shared two-core machine than these few hundred lines.

use std::fmt::Write as _;

/// Escapes text for use both as element content and inside a double- or single-quoted
/// attribute. Every string that comes from data goes through this, because suite and skill
/// names are user-chosen and may contain `<`, `&` or quotes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters are not allowed in XML text; a stray one from a log would make
            // the SVG invalid if the page is ever saved as XHTML, so it is replaced.
            c if c.is_control() && c != '\n' && c != '\t' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// Shortens a label to `max` characters (with an ellipsis) so a long suite name cannot push
/// the legend off the picture; the full name stays available in a `<title>` tooltip.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Maps a data interval onto a pixel interval. `r0`/`r1` may be reversed (the y axis grows
/// downwards in SVG), which is why the mapping is written in terms of both ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scale {
    pub d0: f64,
    pub d1: f64,
    pub r0: f64,
    pub r1: f64,
}

impl Scale {
    pub fn new(d0: f64, d1: f64, r0: f64, r1: f64) -> Scale {
        // A zero-width domain would divide by zero; widen it symmetrically so a single value
        // is drawn in the middle rather than at infinity.
        let (d0, d1) = if d1 > d0 {
            (d0, d1)
        } else {
            (d0 - 0.5, d0 + 0.5)
        };
        Scale { d0, d1, r0, r1 }
    }

    pub fn map(&self, v: f64) -> f64 {
        self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)
    }
}

/// Tick positions for `[lo, hi]` with a step of 1, 2 or 5 times a power of ten, so labels are
/// round numbers. `integer` forces a step of at least 1 (cycle numbers).
pub fn nice_ticks(lo: f64, hi: f64, target: usize, integer: bool) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let step = nice_step(lo, hi, target, integer);
    // The epsilons absorb float error so that a round `lo` or `hi` is itself a tick.
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last.min(first + 1000))
        .map(|k| snap(k, step))
        .collect()
}

/// 1, 2 or 5 times a power of ten, giving about `target` intervals over `[lo, hi]`.
fn nice_step(lo: f64, hi: f64, target: usize, integer: bool) -> f64 {
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    if integer { step.max(1.0).round() } else { step }
}

/// `k * step` without float noise such as 0.6000000000000001 (= 3 * 0.2): a step below 1 is
/// 1/n for an integer n (1, 2 or 5 times a power of ten), and k/n rounds correctly.
fn snap(k: i64, step: f64) -> f64 {
    let t = if step < 1.0 {
        k as f64 / (1.0 / step).round()
    } else {
        k as f64 * step
    };
    if t == 0.0 { 0.0 } else { t }
}

/// Rounds the domain outwards to the enclosing nice ticks, so the axis starts and ends on a
/// labelled value.
pub fn nice_domain(lo: f64, hi: f64, target: usize) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        return (0.0, 1.0);
    }
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 1.0, hi + 1.0)
    };
    // Widening the domain can coarsen the step `nice_ticks` will pick for it (and leave an end
    // unlabelled), so round again with the new step until it is stable; it settles in one or
    // two rounds because the step only ever grows.
    let (mut a, mut b) = (lo, hi);
    for _ in 0..4 {
        let step = nice_step(a, b, target, false);
        let (na, nb) = (
            snap((lo / step + 1e-9).floor() as i64, step),
            snap((hi / step - 1e-9).ceil() as i64, step),
        );
        if (na, nb) == (a, b) {
            break;
        }
        (a, b) = (na, nb);
    }
    (a, b)
}

/// Formats a number compactly for a tick label: no trailing zeros, thousands as `k`, millions
/// as `M`.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6, 2))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3, 1))
    } else if a >= 100.0 || a == 0.0 {
        format!("{}", v.round())
    } else {
        trim(v, 3)
    }
}

/// Fixed decimals with trailing zeros removed (`1.50` -> `1.5`, `2.00` -> `2`).
pub fn trim(v: f64, decimals: usize) -> String {
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

pub fn fmt_pct(v: f64) -> String {
    format!("{}%", trim(v * 100.0, 1))
}

/// Coordinates are written with one decimal: sub-pixel precision beyond that is invisible and
/// only inflates the page.
pub fn c(v: f64) -> String {
    trim(v, 1)
}

/// The rectangle of one chart inside its `<svg>`: the plot area plus room for axes and legend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Frame {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Frame {
    pub fn right(&self) -> f64 {
        self.left + self.width
    }
    pub fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

pub struct Axis<'a> {
    pub scale: Scale,
    pub ticks: Vec<f64>,
    pub label: &'a str,
    pub fmt: &'a dyn Fn(f64) -> String,
}

/// Draws the x axis along the bottom of the frame and the y axis along its left edge, with
/// light horizontal grid lines at the y ticks (they make values readable without hovering).
pub fn axes(out: &mut String, f: &Frame, x: &Axis, y: &Axis) {
    out.push_str("<g class=\"grid\" stroke=\"#e3e3e3\" stroke-width=\"1\">");
    for t in &y.ticks {
        let py = y.scale.map(*t);
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
            c(f.left),
            c(f.right()),
            c(py),
            c(py)
        );
    }
    out.push_str("</g>");
    out.push_str("<g class=\"axis\" stroke=\"#444\" stroke-width=\"1\" fill=\"none\">");
    let _ = write!(
        out,
        "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/><line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
        c(f.left),
        c(f.right()),
        c(f.bottom()),
        c(f.bottom()),
        c(f.left),
        c(f.left),
        c(f.top),
        c(f.bottom())
    );
    for t in &x.ticks {
        let px = x.scale.map(*t);
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
            c(px),
            c(px),
            c(f.bottom()),
            c(f.bottom() + 5.0)
        );
    }
    for t in &y.ticks {
        let py = y.scale.map(*t);
        let _ = write!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\"/>",
            c(f.left - 5.0),
            c(f.left),
            c(py),
            c(py)
        );
    }
    out.push_str("</g>");
    out.push_str("<g class=\"ticks\" font-size=\"11\" fill=\"#333\">");
    for t in &x.ticks {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            c(x.scale.map(*t)),
            c(f.bottom() + 18.0),
            esc(&(x.fmt)(*t))
        );
    }
    for t in &y.ticks {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            c(f.left - 8.0),
            c(y.scale.map(*t) + 4.0),
            esc(&(y.fmt)(*t))
        );
    }
    out.push_str("</g>");
    let _ = write!(
        out,
        "<text class=\"axis-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#222\">{}</text>",
        c(f.left + f.width / 2.0),
        c(f.bottom() + 38.0),
        esc(x.label)
    );
    let (lx, ly) = (f.left - 52.0, f.top + f.height / 2.0);
    let _ = write!(
        out,
        "<text class=\"axis-label\" x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" fill=\"#222\" transform=\"rotate(-90 {} {})\">{}</text>",
        c(lx),
        c(ly),
        c(lx),
        c(ly),
        esc(y.label)
    );
}

/// What a legend entry shows in front of its label.
pub enum Swatch<'a> {
    /// A line sample; `dash` is an SVG `stroke-dasharray` value.
    Line {
        color: &'a str,
        dash: Option<&'a str>,
    },
    /// A filled square, for bar segments.
    Box { color: &'a str },
    /// A marker sample, drawn by the same function the chart uses.
    Marker(MarkerStyle<'a>),
}

pub struct LegendEntry<'a> {
    pub swatch: Swatch<'a>,
    pub label: String,
}

pub const LEGEND_ROW: f64 = 18.0;
const LEGEND_CHARS: usize = 36;

/// Draws the legend as a column starting at (`x`, `y`). Returns the y just below it so callers
/// can size the `<svg>` to fit long legends.
pub fn legend(
    out: &mut String,
    x: f64,
    y: f64,
    title: Option<&str>,
    entries: &[LegendEntry],
) -> f64 {
    let mut y = y;
    out.push_str("<g class=\"legend\" font-size=\"11\" fill=\"#222\">");
    if let Some(t) = title {
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" font-weight=\"bold\">{}</text>",
            c(x),
            c(y + 4.0),
            esc(t)
        );
        y += LEGEND_ROW;
    }
    for e in entries {
        match &e.swatch {
            Swatch::Line { color, dash } => {
                let _ = write!(
                    out,
                    "<line x1=\"{}\" x2=\"{}\" y1=\"{}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"2\"{}/>",
                    c(x),
                    c(x + 24.0),
                    c(y),
                    c(y),
                    color,
                    dash.map(|d| format!(" stroke-dasharray=\"{d}\""))
                        .unwrap_or_default()
                );
            }
            Swatch::Box { color } => {
                let _ = write!(
                    out,
                    "<rect x=\"{}\" y=\"{}\" width=\"14\" height=\"10\" fill=\"{}\"/>",
                    c(x + 5.0),
                    c(y - 5.0),
                    color
                );
            }
            Swatch::Marker(m) => marker(out, x + 12.0, y, MARKER_R, m, None),
        }
        let short = truncate(&e.label, LEGEND_CHARS);
        let _ = write!(out, "<text x=\"{}\" y=\"{}\">", c(x + 30.0), c(y + 4.0));
        if short != e.label {
            // The tooltip carries the name the truncation hid.
            let _ = write!(out, "<title>{}</title>", esc(&e.label));
        }
        let _ = write!(out, "{}</text>", esc(&short));
        y += LEGEND_ROW;
    }
    out.push_str("</g>");
    y
}

/// How a data point is marked. Filled markers are accepted cycles; hollow ones are candidates
/// that did not become the model (rejected, failed, still running).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MarkerStyle<'a> {
    Filled { color: &'a str },
    Hollow { stroke: &'a str },
    Cross { stroke: &'a str },
}

pub const MARKER_R: f64 = 3.5;

pub fn marker(out: &mut String, x: f64, y: f64, r: f64, m: &MarkerStyle, title: Option<&str>) {
    let t = title
        .map(|t| format!("<title>{}</title>", esc(t)))
        .unwrap_or_default();
    let close = |out: &mut String, tag: &str| {
        if t.is_empty() {
            out.push_str("/>");
        } else {
            let _ = write!(out, ">{t}</{tag}>");
        }
    };
    match m {
        MarkerStyle::Filled { color } => {
            let _ = write!(
                out,
                "<circle class=\"mk-filled\" cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{}\" stroke=\"{}\"",
                c(x),
                c(y),
                r,
                color,
                color
            );
            close(out, "circle");
        }
        MarkerStyle::Hollow { stroke } => {
            let _ = write!(
                out,
                "<circle class=\"mk-hollow\" cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"#fff\" stroke=\"{}\" stroke-width=\"1.5\"",
                c(x),
                c(y),
                r,
                stroke
            );
            close(out, "circle");
        }
        MarkerStyle::Cross { stroke } => {
            let _ = write!(
                out,
                "<path class=\"mk-cross\" d=\"M{} {}L{} {}M{} {}L{} {}\" stroke=\"{}\" stroke-width=\"2\" fill=\"none\"",
                c(x - r),
                c(y - r),
                c(x + r),
                c(y + r),
                c(x - r),
                c(y + r),
                c(x + r),
                c(y - r),
                stroke
            );
            close(out, "path");
        }
    }
}

/// A panel that replaces an empty plot: an empty axis reads as "the values were zero", while
/// this says plainly that nothing was recorded.
pub fn no_data(out: &mut String, f: &Frame, message: &str) {
    let _ = write!(
        out,
        "<rect class=\"no-data\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#f7f7f7\" stroke=\"#bbb\" stroke-dasharray=\"6 4\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"16\" fill=\"#555\">{}</text>",
        c(f.left),
        c(f.top),
        c(f.width),
        c(f.height),
        c(f.left + f.width / 2.0),
        c(f.top + f.height / 2.0),
        esc(message)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(esc("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
        assert_eq!(esc("x\u{0}y"), "x\u{FFFD}y");
    }

    #[test]
    fn scale_maps_ends_and_reverses() {
        let s = Scale::new(0.0, 1.0, 300.0, 20.0);
        assert_eq!(s.map(1.0), 20.0);
        assert_eq!(s.map(0.0), 300.0);
        assert_eq!(s.map(0.5), 160.0);
        // Degenerate domain does not divide by zero.
        let d = Scale::new(3.0, 3.0, 0.0, 100.0);
        assert_eq!(d.map(3.0), 50.0);
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(
            nice_ticks(0.0, 1.0, 5, false),
            vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
        );
        assert_eq!(
            nice_ticks(-0.5, 9.5, 8, true),
            vec![0.0, 2.0, 4.0, 6.0, 8.0]
        );
        assert_eq!(
            nice_ticks(-0.5, 3.5, 10, true),
            vec![0.0, 1.0, 2.0, 3.0],
            "cycle ticks stay integers"
        );
        let big = nice_ticks(-0.5, 9999.5, 8, true);
        assert_eq!(big.first(), Some(&0.0));
        assert!(big.len() <= 12 && big.len() >= 4, "{big:?}");
        assert!(nice_ticks(f64::NAN, 1.0, 5, false).is_empty());
        assert_eq!(nice_domain(1.13, 3.87, 5), (1.0, 4.0));
        // A domain that lands on a round number keeps it as its first tick (float noise in
        // k * step once dropped the bottom tick of the compression plot).
        let (lo, hi) = nice_domain(1.0454, 1.255, 5);
        assert_eq!((lo, hi), (1.0, 1.3));
        assert_eq!(nice_ticks(lo, hi, 5, false), vec![1.0, 1.1, 1.2, 1.3]);
        // Both ends of a nice domain are ticks.
        for (a, b) in [
            (1.05, 1.26),
            (0.013, 0.97),
            (3.0, 17.0),
            (-2.5, 0.4),
            (1234.0, 98765.0),
        ] {
            let (lo, hi) = nice_domain(a, b, 5);
            let t = nice_ticks(lo, hi, 5, false);
            assert_eq!(
                (t.first().copied(), t.last().copied()),
                (Some(lo), Some(hi)),
                "{a}..{b}"
            );
            assert!(lo <= a && hi >= b);
        }
        assert_eq!(nice_domain(f64::INFINITY, f64::NEG_INFINITY, 5), (0.0, 1.0));
    }

    #[test]
    fn numbers_format_compactly() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(12000.0), "12k");
        assert_eq!(fmt_num(2_500_000.0), "2.5M");
        assert_eq!(fmt_pct(0.8333), "83.3%");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
