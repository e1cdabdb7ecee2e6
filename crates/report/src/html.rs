//! Page assembly: header, plots with their captions and data tables, data notes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::plots::{self, Ctx};
use crate::svg::{esc, fmt_num, fmt_pct, trim, truncate};
use crate::{ReportData, Warnings};

/// Tables show at most this many cycles (evenly spaced, first and last included); the plots
/// above them show the whole run, and the ledger has every row.
pub const TABLE_ROWS: usize = 300;

const CSS: &str = "\
body{font-family:'DejaVu Sans','Liberation Sans',Arial,sans-serif;margin:0;background:#fafafa;color:#222}\
main{max-width:1140px;margin:0 auto;padding:16px 20px 40px}\
h1{font-size:22px;margin:8px 0 4px}h2{font-size:17px;margin:0 0 6px}\
.sub{color:#555;margin:0 0 14px}\
.summary{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:6px 18px;\
background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin-bottom:18px}\
.summary div{overflow-wrap:anywhere}.summary b{display:block;font-size:11px;color:#666;font-weight:normal;text-transform:uppercase;letter-spacing:.04em}\
.status-finished,.status-accepted{color:#2a7a2a}.status-failed,.status-rejected{color:#c0262d}.status-running{color:#a06a00}\
section.plot{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 16px;margin-bottom:18px}\
svg.plot{display:block;max-width:100%;height:auto}\
.note{color:#666;font-size:12px;margin:4px 0}\
details{margin-top:6px}summary{cursor:pointer;color:#245;font-size:13px}\
.tablewrap{max-height:360px;overflow:auto;border:1px solid #eee;margin-top:6px}\
table{border-collapse:collapse;font-size:12px}th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:right;white-space:nowrap}\
th{position:sticky;top:0;background:#f3f3f3}td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}\
.warn{background:#fff6e5;border:1px solid #f0c36d;border-radius:6px;padding:8px 16px;margin-bottom:18px}\
code{font-size:12px}";

/// A cycle-by-column table: one row per cycle, one column per series.
struct Table {
    columns: Vec<String>,
    rows: BTreeMap<u32, Vec<String>>,
}

impl Table {
    fn new() -> Table {
        Table {
            columns: Vec::new(),
            rows: BTreeMap::new(),
        }
    }

    fn set(&mut self, cycle: u32, column: &str, cell: String) {
        let i = match self.columns.iter().position(|c| c == column) {
            Some(i) => i,
            None => {
                self.columns.push(column.to_string());
                self.columns.len() - 1
            }
        };
        let row = self.rows.entry(cycle).or_default();
        if row.len() <= i {
            row.resize(i + 1, String::new());
        }
        // Two rows for the same cycle and column (a duplicate in the ledger) are both shown
        // rather than one silently winning.
        if row[i].is_empty() {
            row[i] = cell;
        } else {
            row[i] = format!("{} / {cell}", row[i]);
        }
    }

    fn render(&self, out: &mut String, ctx: &Ctx) {
        if self.rows.is_empty() {
            return;
        }
        let cycles: Vec<u32> = self.rows.keys().copied().collect();
        let picked: Vec<u32> = if cycles.len() <= TABLE_ROWS {
            cycles.clone()
        } else {
            let mut p: Vec<u32> = (0..TABLE_ROWS)
                .map(|i| cycles[i * (cycles.len() - 1) / (TABLE_ROWS - 1)])
                .collect();
            p.dedup();
            p
        };
        let _ = write!(out, "<details><summary>Data table ({} cycles", cycles.len());
        if picked.len() < cycles.len() {
            let _ = write!(out, "; {} evenly spaced cycles shown", picked.len());
        }
        out.push_str(
            ")</summary><div class=\"tablewrap\"><table><thead><tr><th>cycle</th><th>status</th>",
        );
        for c in &self.columns {
            let _ = write!(out, "<th>{}</th>", esc(c));
        }
        out.push_str("</tr></thead><tbody>");
        for cy in picked {
            let row = &self.rows[&cy];
            let st = ctx.status(cy);
            let _ = write!(
                out,
                "<tr><td>{cy}</td><td class=\"status-{}\">{}</td>",
                esc(st),
                esc(st)
            );
            for i in 0..self.columns.len() {
                let _ = write!(
                    out,
                    "<td>{}</td>",
                    esc(row.get(i).map(String::as_str).unwrap_or(""))
                );
            }
            out.push_str("</tr>");
        }
        out.push_str("</tbody></table></div></details>");
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".to_string())
}

fn section(
    out: &mut String,
    ctx: &Ctx,
    heading: &str,
    svg: &str,
    note: Option<String>,
    table: &Table,
) {
    let _ = write!(
        out,
        "<section class=\"plot\"><h2>{}</h2>{svg}",
        esc(heading)
    );
    if let Some(n) = note {
        let _ = write!(out, "<p class=\"note\">{}</p>", esc(&n));
    }
    table.render(out, ctx);
    out.push_str("</section>");
}

fn header(out: &mut String, d: &ReportData) {
    let r = &d.run;
    let _ = write!(
        out,
        "<h1>evolve run {} — {}</h1><p class=\"sub\">curriculum <code>{}</code> · preset <code>{}</code> · budget <code>{}</code></p>",
        r.run_id,
        esc(&r.status),
        esc(&r.curriculum),
        esc(&r.preset),
        esc(&r.budget)
    );
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for c in d.cycles.iter().filter(|c| c.cycle != 0) {
        *counts.entry(c.status.as_str()).or_default() += 1;
    }
    let examples: i64 = d.cycles.iter().map(|c| c.examples_trained.max(0)).sum();
    let latest = d
        .cycles
        .iter()
        .filter(|c| c.status == "accepted" || c.cycle == 0)
        .max_by_key(|c| c.cycle);
    let mut items: Vec<(&str, String)> = vec![
        (
            "status",
            format!(
                "<span class=\"status-{}\">{}</span>",
                esc(&r.status),
                esc(&r.status)
            ),
        ),
        ("started", esc(&r.started_at)),
        (
            "finished",
            esc(r.finished_at.as_deref().unwrap_or("— (not finished)")),
        ),
        ("stop reason", esc(r.stop_reason.as_deref().unwrap_or("—"))),
        (
            "cycles (excluding base)",
            if counts.is_empty() {
                "0".to_string()
            } else {
                counts
                    .iter()
                    .map(|(s, n)| {
                        format!("<span class=\"status-{}\">{n} {}</span>", esc(s), esc(s))
                    })
                    .collect::<Vec<_>>()
                    .join(" · ")
            },
        ),
        ("examples trained (all cycles)", fmt_num(examples as f64)),
    ];
    if let Some(c) = latest {
        let hash = c.checkpoint_hash.as_deref().unwrap_or("—");
        items.push((
            "latest accepted checkpoint",
            format!(
                "cycle {} · <code title=\"{}\">{}</code>",
                c.cycle,
                esc(hash),
                esc(&truncate(hash, 17))
            ),
        ));
    }
    let gpu: f64 = d
        .budget
        .iter()
        .map(|b| b.gpu_seconds)
        .filter(|v| v.is_finite())
        .sum();
    let busy: f64 = d
        .budget
        .iter()
        .map(|b| b.busy_seconds)
        .filter(|v| v.is_finite())
        .sum();
    let cost: f64 = d
        .budget
        .iter()
        .map(|b| b.cost_usd)
        .filter(|v| v.is_finite())
        .sum();
    if !d.budget.is_empty() {
        items.push((
            "GPU / busy seconds",
            format!("{} / {}", fmt_num(gpu), fmt_num(busy)),
        ));
        items.push(("cost", format!("${}", trim(cost, 2))));
    }
    out.push_str("<div class=\"summary\">");
    for (k, v) in items {
        let _ = write!(out, "<div><b>{}</b>{v}</div>", esc(k));
    }
    out.push_str("</div>");
}

pub fn page(d: &ReportData) -> String {
    let ctx = Ctx::new(d);
    let mut w = Warnings::default();
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>evolve run {} report</title><style>{CSS}</style></head><body><main>",
        d.run.run_id
    );
    header(&mut out, d);

    let mut body = String::new();

    let (svg, note) = plots::accuracy(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.suites {
        t.set(
            p.cycle,
            &p.suite,
            if p.accuracy.is_finite() {
                fmt_pct(p.accuracy)
            } else {
                p.accuracy.to_string()
            },
        );
    }
    section(&mut body, &ctx, "Accuracy per suite", &svg, note, &t);

    let (svg, note) = plots::refusal(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.refusal {
        t.set(p.cycle, "refusal rate", opt(p.refusal_rate, fmt_pct));
        t.set(
            p.cycle,
            "over-refusal rate",
            opt(p.over_refusal_rate, fmt_pct),
        );
    }
    section(&mut body, &ctx, "Refusal", &svg, note, &t);

    let (svg, note) = plots::proxy_gap(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.proxy_gap {
        t.set(
            p.cycle,
            &format!("{} AUC", p.skill),
            opt(p.auc, |v| trim(v, 3)),
        );
        t.set(
            p.cycle,
            &format!("{} calibration error", p.skill),
            opt(p.calibration_error, |v| trim(v, 3)),
        );
    }
    section(&mut body, &ctx, "Proxy gap", &svg, note, &t);

    let svg = plots::training_mix(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.training_mix {
        t.set(
            p.cycle,
            &p.skill,
            format!("{} ({})", p.examples, opt(p.share, fmt_pct)),
        );
    }
    section(&mut body, &ctx, "Training mix", &svg, None, &t);

    let (svg, note) = plots::compression(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.compression {
        let ok = if p.lossless { "" } else { " (lossy copy)" };
        t.set(
            p.cycle,
            &p.codec,
            format!("{}{ok}", opt(p.ratio, |v| format!("{}×", trim(v, 3)))),
        );
    }
    section(&mut body, &ctx, "Compression", &svg, note, &t);

    let svg = plots::budget(&ctx, d, &mut w);
    let mut t = Table::new();
    for p in &d.budget {
        t.set(
            p.cycle,
            &p.role,
            format!(
                "{} busy s · {} GPU s · ${}",
                fmt_num(p.busy_seconds),
                fmt_num(p.gpu_seconds),
                trim(p.cost_usd, 2)
            ),
        );
    }
    section(&mut body, &ctx, "Budget", &svg, None, &t);

    // Data notes come before the plots: they qualify what the plots show.
    if !w.notes().is_empty() {
        out.push_str("<div class=\"warn\" id=\"data-notes\"><b>Data notes</b><ul>");
        for n in w.notes() {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        if w.suppressed() > 0 {
            let _ = write!(out, "<li>… and {} more</li>", w.suppressed());
        }
        out.push_str("</ul></div>");
    }
    out.push_str(&body);
    out.push_str("</main></body></html>\n");
    out
}
