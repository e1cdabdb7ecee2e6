//! Renders a realistic run in a real headless Chromium: the six plots must be in the DOM the
//! browser built, a screenshot must come out, and the browser console must stay silent.
//!
//! Console check: Chromium with `--enable-logging=stderr --v=0` logs every console message,
//! uncaught exception and Content-Security-Policy violation as a `...:CONSOLE...]` line on
//! stderr. The report runs no script, so *any* such line is a failure. Because a check that
//! never fires proves nothing, each run first renders control pages (a throwing script, a
//! blocked external request under the report's own CSP) and requires the check to catch them;
//! if Chromium ever stops logging console messages this way, the test fails instead of
//! passing vacuously.
//!
//! Needs Debian's `chromium` package (`apt-get install -y chromium`; `.ci/run` installs it).
//! Set `EVOLVE_SKIP_BROWSER=1` to skip on a machine without it, or `EVOLVE_CHROMIUM=PATH` to
//! use another Chromium binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use evolve_report::{ReportData, render_html, write_report};

const CHROMIUM: &str = "/usr/bin/chromium";
const TIMEOUT: Duration = Duration::from_secs(120);
const PLOT_IDS: [&str; 6] = [
    "plot-accuracy",
    "plot-refusal",
    "plot-proxy-gap",
    "plot-training-mix",
    "plot-compression",
    "plot-budget",
];

fn fixture() -> ReportData {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/run7.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `None` means: skip (explicitly requested). A missing browser without the opt-out is a
/// failure, so CI cannot silently lose this test.
fn chromium() -> Option<PathBuf> {
    if std::env::var("EVOLVE_SKIP_BROWSER").is_ok_and(|v| v == "1") {
        eprintln!("EVOLVE_SKIP_BROWSER=1: skipping the headless-browser test");
        return None;
    }
    // EVOLVE_CHROMIUM points at another build (a developer's non-Debian machine).
    let p = std::env::var_os("EVOLVE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CHROMIUM));
    assert!(
        p.is_file(),
        "{} not found: install Debian's `chromium` package (sudo apt-get install -y chromium), \
         or set EVOLVE_SKIP_BROWSER=1 to skip this test",
        p.display()
    );
    Some(p)
}

struct Output {
    stdout: String,
    stderr: String,
}

/// Runs headless Chromium on `page` with a fresh profile (so no state leaks between runs or
/// from a developer's own browser) and the flags that stop it from phoning home.
fn run_chromium(bin: &Path, work: &Path, page: &Path, extra: &[String]) -> Output {
    let profile = tempfile::tempdir_in(work).expect("profile dir");
    let out_path = work.join(format!("chromium-{}.out", std::process::id()));
    let err_path = work.join(format!("chromium-{}.err", std::process::id()));
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        // Files rather than pipes: a chatty browser cannot deadlock on a full pipe while we
        // poll for its exit.
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for chromium") {
            break s;
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {TIMEOUT:?} on {}",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "chromium failed ({status}) on {}:\n{stderr}",
        page.display()
    );
    Output { stdout, stderr }
}

/// The console lines Chromium logged: console.* calls, uncaught exceptions, CSP violations.
fn console_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG"
    );
    assert_eq!(&bytes[12..16], b"IHDR", "PNG without IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(bin) = chromium() else { return };
    let work = tempfile::tempdir().expect("temp dir");
    let data = fixture();

    // Control 1: a script error must be caught by the console check.
    let broken = work.path().join("broken.html");
    std::fs::write(&broken, "<!DOCTYPE html><html><body><p>x</p><script>throw new Error('deliberate')</script></body></html>").unwrap();
    let out = run_chromium(&bin, work.path(), &broken, &["--dump-dom".into()]);
    assert!(
        console_lines(&out.stderr)
            .iter()
            .any(|l| l.contains("Uncaught Error: deliberate")),
        "the console check did not see a deliberately thrown error; it cannot be trusted:\n{}",
        out.stderr
    );

    // Control 2: the real page with an external image injected: its CSP must block the
    // request, and the block must show up in the console check.
    let leaky = work.path().join("leaky.html");
    let page = render_html(&data).replace(
        "<main>",
        "<main><img src=\"http://example.invalid/x.png\" alt=\"\">",
    );
    std::fs::write(&leaky, page).unwrap();
    let out = run_chromium(&bin, work.path(), &leaky, &["--dump-dom".into()]);
    assert!(
        console_lines(&out.stderr)
            .iter()
            .any(|l| l.contains("Content Security Policy")),
        "an external request in the report was not reported as a CSP violation:\n{}",
        out.stderr
    );

    // The real report, written the way the CLI writes it.
    let index = write_report(&work.path().join("report"), &data).expect("write report");
    let out = run_chromium(&bin, work.path(), &index, &["--dump-dom".into()]);
    let console = console_lines(&out.stderr);
    assert!(
        console.is_empty(),
        "the report produced console messages:\n{}",
        console.join("\n")
    );
    let dom = &out.stdout;
    assert!(dom.contains("</html>"), "no DOM dumped:\n{}", out.stderr);
    for id in PLOT_IDS {
        let tag = format!("<svg id=\"{id}\"");
        assert_eq!(
            dom.matches(&tag).count(),
            1,
            "{id} missing (or duplicated) in the rendered DOM"
        );
    }
    // The browser parsed the escaped suite name back into text: it shows up escaped in the
    // serialised DOM and was never turned into an element.
    assert!(
        dom.contains("regex &lt;match&gt; &amp; co"),
        "escaped suite name missing from DOM"
    );
    assert!(
        !dom.contains("<match>"),
        "suite name leaked into the DOM as markup"
    );
    // The empty proxy-gap series is a labelled panel, not an empty axis.
    assert!(dom.contains("No proxy-gap data recorded"));

    let shot = work.path().join("report.png");
    let out = run_chromium(
        &bin,
        work.path(),
        &index,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,3000".into(),
            "--hide-scrollbars".into(),
        ],
    );
    let console = console_lines(&out.stderr);
    assert!(
        console.is_empty(),
        "the report produced console messages:\n{}",
        console.join("\n")
    );
    let png = std::fs::read(&shot)
        .unwrap_or_else(|e| panic!("no screenshot at {}: {e}\n{}", shot.display(), out.stderr));
    assert_eq!(png_size(&png), (1400, 3000));
    // A blank 1400x3000 page compresses to a few kB; six plots with text are far larger.
    assert!(
        png.len() > 100_000,
        "screenshot suspiciously small ({} bytes)",
        png.len()
    );
    if let Ok(keep) = std::env::var("EVOLVE_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, &keep).expect("copy screenshot");
    }
}
