//! End-to-end tests of `evolve ledger …` on a synthetic ledger: every
//! subcommand in every format, filters and windows, and the error paths
//! (exit code 1, a message naming the ledger or flag, the file untouched).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn evolve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_evolve")).args(args).env("EVOLVE_LOG", "warn").output().expect("evolve runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// One synthetic ledger shared by the read-only tests of this file (they
/// never change it, which one of them checks byte for byte).
fn ledger() -> &'static Path {
    static LEDGER: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_, path) = LEDGER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synth.db");
        let out = evolve(&["ledger", "synth", "--out", path.to_str().unwrap(), "--cycles", "300", "--suites", "20", "--seed", "5", "--item-cycles", "10"]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        assert!(stdout(&out).contains("300 cycles") && stdout(&out).contains("eval rows"), "{}", stdout(&out));
        (dir, path)
    });
    path
}

fn ok(args: &[&str]) -> String {
    let out = evolve(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    assert!(stderr(&out).is_empty(), "{args:?}: {}", stderr(&out));
    stdout(&out)
}

fn fails(args: &[&str], needles: &[&str]) -> String {
    let out = evolve(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {}{err}", stdout(&out));
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
    err
}

#[test]
fn every_subcommand_answers_in_every_format() {
    let db = ledger().to_str().unwrap();
    for cmd in ["cycles", "drift", "refusal", "compression", "lineage", "budget", "quantized", "proxy-gap"] {
        let table = ok(&["ledger", cmd, "--ledger", db]);
        assert!(table.lines().count() > 1, "{cmd}: {table}");
        let json: serde_json::Value = serde_json::from_str(&ok(&["ledger", cmd, "--ledger", db, "--format", "json"])).unwrap();
        let rows = json.as_array().unwrap();
        assert!(!rows.is_empty(), "{cmd}");
        // The default window is the last 20 cycles of the latest run.
        assert!(rows.iter().all(|r| r["cycle"].as_i64().unwrap() >= 280 && r["run_id"] == 1), "{cmd}");
        let csv = ok(&["ledger", cmd, "--ledger", db, "--format", "csv"]);
        assert_eq!(csv.lines().count(), rows.len() + 1, "{cmd}: one CSV line per JSON row plus the header");
        assert_eq!(table.lines().count(), rows.len() + 1, "{cmd}: one table line per row plus the header");
    }
}

#[test]
fn windows_and_filters_select_rows() {
    let db = ledger().to_str().unwrap();
    let rows = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["ledger"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--ledger", db, "--format", "json"]);
        serde_json::from_str::<serde_json::Value>(&ok(&a)).unwrap().as_array().unwrap().clone()
    };
    assert_eq!(rows(&["cycles", "--all"]).len(), 300);
    assert_eq!(rows(&["cycles", "--last", "5"]).len(), 5);
    assert_eq!(rows(&["cycles", "--last", "5", "--run", "1"]).len(), 5);
    let drift = rows(&["drift", "--suite", "sorting/L1", "--all"]);
    assert!(drift.len() > 250 && drift.iter().all(|r| r["suite"] == "sorting/L1"));
    // delta_vs_base is exactly accuracy minus cycle 0's accuracy.
    let base = drift[0]["accuracy"].as_f64().unwrap();
    for r in &drift {
        let d = r["delta_vs_base"].as_f64().unwrap();
        assert!((d - (r["accuracy"].as_f64().unwrap() - base)).abs() < 1e-12, "{r}");
    }
    let lineage = rows(&["lineage", "--all"]);
    assert_eq!(lineage[0]["depth"], 0);
    assert!(lineage.iter().any(|r| r["status"] == "rejected"));
    let q = rows(&["quantized", "--suite", "addition/L1", "--all"]);
    assert!(!q.is_empty() && q.iter().all(|r| r["suite"] == "addition/L1" && r["codec"] == "int8"));
}

#[test]
fn diff_and_sql() {
    let db = ledger().to_str().unwrap();
    let table = ok(&["ledger", "diff", "291", "299", "--ledger", db]);
    assert!(table.starts_with("suite") && table.contains("[refusal]") && table.contains("[over-refusal]"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&ok(&["ledger", "diff", "291", "299", "--ledger", db, "--format", "json"])).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 20 + 2);
    assert!(rows.iter().any(|r| r["items_compared"].as_i64().unwrap_or(0) > 0), "{json}");

    let csv = ok(&["ledger", "sql", "SELECT status, COUNT(*) AS n FROM v_cycles GROUP BY status ORDER BY status", "--ledger", db, "--format", "csv"]);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "status,n");
    let total: i64 = lines[1..].iter().map(|l| l.split(',').nth(1).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(total, 300);
}

#[test]
fn writes_through_sql_are_refused_and_change_nothing() {
    let db = ledger();
    let before = std::fs::read(db).unwrap();
    let p = db.to_str().unwrap();
    fails(&["ledger", "sql", "DELETE FROM evals", "--ledger", p], &[p, "DELETE", "read-only"]);
    fails(&["ledger", "sql", "SELECT 1; DROP TABLE evals", "--ledger", p], &[p, "2 statements"]);
    fails(&["ledger", "sql", "WITH x AS (SELECT 1) UPDATE cycles SET status = 'failed'", "--ledger", p], &[p, "would write"]);
    fails(&["ledger", "sql", "PRAGMA user_version = 3", "--ledger", p], &[p, "PRAGMA"]);
    fails(&["ledger", "sql", "SELECT nope FROM evals", "--ledger", p], &[p, "no such column: nope"]);
    assert_eq!(std::fs::read(db).unwrap(), before);
}

#[test]
fn bad_input_fails_with_exit_1_and_names_what_is_wrong() {
    let db = ledger().to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.db");
    fails(&["ledger", "drift", "--ledger", missing.to_str().unwrap()], &[missing.to_str().unwrap(), "does not exist"]);
    fails(&["ledger", "cycles", "--ledger", db, "--run", "7"], &[db, "no run 7"]);
    fails(&["ledger", "diff", "3", "4000", "--ledger", db], &[db, "no cycle 4000"]);

    let text = dir.path().join("notes.db");
    std::fs::write(&text, "not a database at all, just words").unwrap();
    fails(&["ledger", "budget", "--ledger", text.to_str().unwrap()], &[text.to_str().unwrap(), "not a SQLite database"]);
    assert_eq!(std::fs::read_to_string(&text).unwrap(), "not a database at all, just words");

    // synth never overwrites.
    let before = std::fs::read(db).unwrap();
    fails(&["ledger", "synth", "--out", db, "--cycles", "3", "--suites", "2"], &[db, "already exists"]);
    assert_eq!(std::fs::read(db).unwrap(), before);

    // The smallest synthetic ledger is just a base: drift against itself is 0.
    let tiny = dir.path().join("tiny.db");
    ok(&["ledger", "synth", "--out", tiny.to_str().unwrap(), "--cycles", "1", "--suites", "3"]);
    let drift: serde_json::Value = serde_json::from_str(&ok(&["ledger", "drift", "--ledger", tiny.to_str().unwrap(), "--format", "json"])).unwrap();
    let drift = drift.as_array().unwrap();
    assert_eq!(drift.len(), 3);
    assert!(drift.iter().all(|r| r["cycle"] == 0 && r["delta_vs_base"] == 0.0 && r["delta_vs_parent"].is_null()), "{drift:?}");

    // Flag values clap rejects are usage errors (exit 2) that name the flag.
    let out = evolve(&["ledger", "drift", "--ledger", db, "--format", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--format") && stderr(&out).contains("table, json, csv"), "{}", stderr(&out));
    let out = evolve(&["ledger", "drift", "--ledger", db, "--last", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--last"), "{}", stderr(&out));
}
