//! The evolve run report: one self-contained HTML page (inline CSS, inline SVG plots, no
//! script, no external request) that summarises a run from plain data. `evolve report --out
//! DIR` reads the ledger, fills a [`ReportData`], and calls [`write_report`].
//!
//! The page has a run header, then six plots, each an `<svg id="plot-…">` with a `<title>`,
//! axes, ticks and a legend, followed by a collapsible data table: accuracy per suite,
//! refusal / over-refusal, proxy gap, training mix, compression ratio, and budget per role.
//! Lines follow the model's trajectory (the base and accepted cycles, filled markers); rejected
//! candidates are hollow markers off the line (in the suite's colour, so it stays clear whose
//! candidate it was), failed cycles red ticks above the plot (or red crosses where a failed
//! cycle has a value).
//!
//! Architecture invariants:
//! - Plain data in, HTML out. This crate knows nothing of the ledger, SQL, models or the CLI
//!   (no `evolve-ledger`, sqlx, burn or clap dependency); [`ReportData`] is serde so a JSON
//!   fixture can stand in for a ledger in tests.
//! - Rendering never fails and never panics: malformed values (NaN, negative costs, unknown
//!   statuses, empty series) are drawn conservatively or skipped, and every skipped value is
//!   listed in a "data notes" section of the page rather than silently dropped.
//! - Every string that comes from data is escaped before it reaches the page.
//! - The page is bounded in size whatever the run length: lines keep at most four points per
//!   pixel column, markers and bars are bucketed, tables are sampled, so a 10,000-cycle run
//!   stays well under a few MB.
//! - The page makes no network request and runs no script; a Content-Security-Policy meta tag
//!   enforces it, so a regression shows up as a blocked request in the browser console (which
//!   the headless-browser test checks) rather than as a silent dependency on the network.
//! - `index.html` is written atomically (temp file in the same directory, fsync, rename), so a
//!   reader never sees a half-written page, even when a report is regenerated in place.

mod html;
pub mod plots;
pub mod svg;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the report shows, one field per plot plus the run header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReportData {
    pub run: RunSummary,
    #[serde(default)]
    pub cycles: Vec<CyclePoint>,
    #[serde(default)]
    pub suites: Vec<SuitePoint>,
    #[serde(default)]
    pub refusal: Vec<RefusalPoint>,
    /// Empty until the learned discriminator exists; the plot then says "no data recorded".
    #[serde(default)]
    pub proxy_gap: Vec<ProxyGapPoint>,
    #[serde(default)]
    pub training_mix: Vec<MixPoint>,
    #[serde(default)]
    pub compression: Vec<CompressionPoint>,
    #[serde(default)]
    pub budget: Vec<BudgetPoint>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: i64,
    pub curriculum: String,
    pub budget: String,
    pub preset: String,
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub stop_reason: Option<String>,
}

/// One row of `v_cycles`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CyclePoint {
    pub cycle: u32,
    /// `accepted`, `rejected`, `failed` or `running`; cycle 0 is the base model and is always
    /// drawn as part of the trajectory.
    pub status: String,
    pub checkpoint_hash: Option<String>,
    pub examples_trained: i64,
}

/// One row of `v_evals`. Rows with no accuracy (`n = 0`) are left out by the caller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SuitePoint {
    pub suite: String,
    pub skill: String,
    /// `mastered` (drawn solid) or `frontier` (drawn dashed).
    pub role: String,
    pub cycle: u32,
    /// In [0, 1].
    pub accuracy: f64,
}

/// One row of `v_refusal`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefusalPoint {
    pub cycle: u32,
    pub refusal_rate: Option<f64>,
    pub over_refusal_rate: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyGapPoint {
    pub cycle: u32,
    pub skill: String,
    pub auc: Option<f64>,
    pub calibration_error: Option<f64>,
}

/// One row of `v_training_mix`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MixPoint {
    pub cycle: u32,
    pub skill: String,
    pub examples: i64,
    /// `examples / total of the cycle`; derived from the counts when absent.
    pub share: Option<f64>,
}

/// One row of `v_compression`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CompressionPoint {
    pub cycle: u32,
    pub codec: String,
    /// raw bytes / stored bytes.
    pub ratio: Option<f64>,
    pub lossless: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BudgetPoint {
    pub cycle: u32,
    pub role: String,
    pub gpu_seconds: f64,
    pub busy_seconds: f64,
    pub cost_usd: f64,
}

/// Problems found in the data while rendering. They go on the page ("data notes"), because a
/// report that silently drops a NaN hides exactly the bug a researcher is looking for.
#[derive(Debug, Default)]
pub struct Warnings {
    notes: Vec<String>,
    suppressed: usize,
}

impl Warnings {
    /// Keeps the first hundred notes; a run with a systematic problem would otherwise list the
    /// same complaint ten thousand times.
    const MAX: usize = 100;

    pub fn note(&mut self, s: String) {
        if self.notes.len() < Self::MAX {
            self.notes.push(s);
        } else {
            self.suppressed += 1;
        }
    }

    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn suppressed(&self) -> usize {
        self.suppressed
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("report: cannot create output directory {}: {source}", .dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("report: cannot write {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Renders the whole page. Infallible by design: see the invariants above.
pub fn render_html(data: &ReportData) -> String {
    html::page(data)
}

/// Writes `dir/index.html` atomically, creating `dir` if needed, and returns the page's path.
pub fn write_report(dir: &Path, data: &ReportData) -> Result<PathBuf, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join("index.html");
    let page = render_html(data);
    let err = |source| ReportError::Write {
        path: path.clone(),
        source,
    };
    // The temp file lives in the target directory so the rename cannot cross filesystems
    // (which would not be atomic), and is removed by its Drop if anything below fails.
    let mut tmp = tempfile::Builder::new()
        .prefix(".index.html.")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(page.as_bytes()).map_err(err)?;
    // Temp files are created 0600; a report is meant to be shared (served, copied), so it
    // gets the usual mode of a document.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
    }
    // fsync before the rename: otherwise a crash can leave the new name pointing at an empty
    // file on filesystems that reorder metadata and data writes.
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(&path).map_err(|e| err(e.error))?;
    // The rename itself is durable only once the directory entry is synced. Not every
    // platform lets a directory be opened for this, and the page is already complete and
    // visible, so a failure here is not worth failing the report for.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}
