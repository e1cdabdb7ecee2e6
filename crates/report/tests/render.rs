//! The public API end to end, without a browser: page structure, escaping, size bounds for
//! long runs, and the atomic write.

use std::path::Path;

use evolve_report::*;

fn fixture() -> ReportData {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run7.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

const PLOT_IDS: [&str; 6] = [
    "plot-accuracy",
    "plot-refusal",
    "plot-proxy-gap",
    "plot-training-mix",
    "plot-compression",
    "plot-budget",
];

fn assert_six_plots(page: &str) {
    for id in PLOT_IDS {
        assert_eq!(
            page.matches(&format!("<svg id=\"{id}\"")).count(),
            1,
            "{id}"
        );
        assert_eq!(
            page.matches(&format!("<title id=\"{id}-title\">")).count(),
            1,
            "{id} title"
        );
    }
}

#[test]
fn fixture_round_trips_through_json() {
    let d = fixture();
    let again: ReportData = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(d, again);
    assert!(d.cycles.len() > 50 && !d.suites.is_empty() && d.proxy_gap.is_empty());
}

#[test]
fn page_is_self_contained_with_six_plots_and_a_header() {
    let page = render_html(&fixture());
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert_six_plots(&page);
    assert!(page.contains("evolve run 7"));
    assert!(page.contains("curricula/arith-to-regex.toml"));
    // Nothing is fetched: no script, no external stylesheet, no remote URL anywhere (the SVG
    // namespace is an identifier, not a request).
    let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for bad in ["<script", "<link", "http://", "https://", "src=\"", "url("] {
        assert!(!without_ns.contains(bad), "page contains {bad}");
    }
    assert!(page.contains("Content-Security-Policy"));
    // The tables are there for screen readers and copy-paste.
    assert_eq!(
        page.matches("<details>").count(),
        5,
        "every plot with data has a table"
    );
}

#[test]
fn an_empty_run_still_renders_every_plot_as_a_no_data_panel() {
    let page = render_html(&ReportData::default());
    assert_six_plots(&page);
    assert_eq!(page.matches("class=\"no-data\"").count(), 6);
    assert!(!page.contains("<details>"), "no table without rows");
}

#[test]
fn every_string_from_data_is_escaped() {
    let mut d = fixture();
    let evil = "<script>alert('x')</script>&\"";
    d.run.curriculum = evil.into();
    d.run.stop_reason = Some(evil.into());
    d.suites[0].suite = evil.into();
    d.training_mix[0].skill = evil.into();
    d.compression[0].codec = evil.into();
    d.budget[0].role = evil.into();
    d.cycles[3].status = evil.into();
    let page = render_html(&d);
    assert!(!page.contains("<script"), "unescaped markup from data");
    assert!(!page.contains("alert('x')"), "unescaped quote from data");
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"));
}

#[test]
fn ten_thousand_cycles_stay_small() {
    let n = 10_000u32;
    let suites = 10;
    let mut d = ReportData::default();
    for c in 0..n {
        let status = match c % 5 {
            _ if c == 0 => "accepted",
            0 | 3 => "rejected",
            4 if c % 1000 == 4 => "failed",
            _ => "accepted",
        };
        d.cycles.push(CyclePoint {
            cycle: c,
            status: status.into(),
            checkpoint_hash: Some(format!("{c:064x}")),
            examples_trained: 1000,
        });
        for s in 0..suites {
            let acc = ((c as f64 / 2000.0 + s as f64 / 10.0).sin() + 1.0) / 2.0;
            let role = if s < 5 { "mastered" } else { "frontier" };
            d.suites.push(SuitePoint {
                suite: format!("suite-{s}"),
                skill: format!("skill-{s}"),
                role: role.into(),
                cycle: c,
                accuracy: acc,
            });
        }
        d.refusal.push(RefusalPoint {
            cycle: c,
            refusal_rate: Some(0.9),
            over_refusal_rate: Some(0.1),
        });
        d.proxy_gap.push(ProxyGapPoint {
            cycle: c,
            skill: "skill-0".into(),
            auc: Some(0.7),
            calibration_error: Some(0.05),
        });
        for s in 0..5 {
            d.training_mix.push(MixPoint {
                cycle: c,
                skill: format!("skill-{s}"),
                examples: 100 + s,
                share: None,
            });
        }
        for codec in ["zstd", "byteplane-zstd"] {
            d.compression.push(CompressionPoint {
                cycle: c,
                codec: codec.into(),
                ratio: Some(1.1 + (c % 13) as f64 / 100.0),
                lossless: true,
            });
        }
        for role in ["trainer", "generator", "evaluator"] {
            d.budget.push(BudgetPoint {
                cycle: c,
                role: role.into(),
                gpu_seconds: 100.0,
                busy_seconds: 120.0,
                cost_usd: 0.07,
            });
        }
    }
    let start = std::time::Instant::now();
    let page = render_html(&d);
    let took = start.elapsed();
    assert_six_plots(&page);
    // Measured at about 1.6 MB and 58k `<` (opening plus closing tags); the bounds leave
    // headroom, not room for growth with the number of cycles (which would be 10x over).
    assert!(page.len() < 2_500_000, "page is {} bytes", page.len());
    let elements = page.matches('<').count();
    assert!(elements < 80_000, "{elements} tags");
    // Downsampling is announced, not silent.
    assert!(page.contains("drawn (per pixel column"));
    assert!(page.contains("evenly spaced cycles shown"));
    assert!(page.contains("share (mean of 50 cycles)"));
    assert!(took.as_secs() < 10, "rendering took {took:?}");
}

#[test]
fn bad_values_are_listed_as_data_notes_not_plotted() {
    let mut d = fixture();
    d.suites[0].accuracy = f64::NAN;
    d.budget[0].cost_usd = -1.0;
    d.compression[0].lossless = false;
    let page = render_html(&d);
    let notes = &page[page.find("id=\"data-notes\"").expect("data notes section")..];
    assert!(notes.contains("non-finite value"));
    assert!(notes.contains("invalid cost"));
    // A lossy row is a quantized copy: labelled as such, not a data problem.
    assert!(!page.contains("NOT lossless") && !page.contains("was not lossless"));
    assert!(page.contains("(lossy copy)"));
}

#[test]
fn write_report_creates_the_directory_and_replaces_atomically() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/report");
    let d = fixture();
    let path = write_report(&dir, &d).unwrap();
    assert_eq!(path, dir.join("index.html"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), render_html(&d));
    // Regenerating in place replaces the page and leaves no temp file behind.
    let mut d2 = d.clone();
    d2.run.run_id = 8;
    write_report(&dir, &d2).unwrap();
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("evolve run 8")
    );
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("index.html")]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
    }
}

#[test]
fn write_report_into_a_file_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = write_report(&file, &fixture()).unwrap_err();
    assert!(matches!(err, ReportError::CreateDir { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not-a-dir") && msg.contains("cannot create output directory"),
        "{msg}"
    );
}
