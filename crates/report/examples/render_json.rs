//! Renders a report from a `ReportData` JSON file, for looking at a fixture in a browser
//! without a ledger: `cargo run --release -p evolve-report --example render_json -- DATA.json OUT_DIR`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, out] = args.as_slice() else {
        return Err("usage: render_json DATA.json OUT_DIR".into());
    };
    let text = std::fs::read_to_string(data).map_err(|e| format!("{data}: {e}"))?;
    let data: evolve_report::ReportData =
        serde_json::from_str(&text).map_err(|e| format!("{data}: {e}"))?;
    let path = evolve_report::write_report(std::path::Path::new(out), &data)?;
    println!("{}", path.display());
    Ok(())
}
