//! One tabular shape for every query answer, so the CLI (and the report) has
//! one formatter for table, JSON and CSV instead of one per subcommand.

use serde::ser::{SerializeMap as _, SerializeSeq as _};
use serde::{Serialize, Serializer};

/// One SQLite value. Ratios whose denominator was zero arrive as `Null`
/// (never NaN), so "no data" reads as empty, not as a number.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Cell {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
}

impl Cell {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Cell::Int(i) => Some(*i as f64),
            Cell::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// Text for a machine: full precision, NULL as an empty field.
    fn exact(&self) -> String {
        match self {
            Cell::Null => String::new(),
            Cell::Int(i) => i.to_string(),
            Cell::Real(r) => r.to_string(),
            Cell::Text(t) => t.clone(),
        }
    }
}

impl From<i64> for Cell {
    fn from(v: i64) -> Self {
        Cell::Int(v)
    }
}
impl From<u32> for Cell {
    fn from(v: u32) -> Self {
        Cell::Int(i64::from(v))
    }
}
impl From<u64> for Cell {
    fn from(v: u64) -> Self {
        i64::try_from(v).map(Cell::Int).unwrap_or(Cell::Real(v as f64))
    }
}
impl From<bool> for Cell {
    fn from(v: bool) -> Self {
        Cell::Int(i64::from(v))
    }
}
impl From<f64> for Cell {
    /// NaN is how the 0001-era row types say "NULL ratio".
    fn from(v: f64) -> Self {
        if v.is_nan() {
            Cell::Null
        } else {
            Cell::Real(v)
        }
    }
}
impl From<String> for Cell {
    fn from(v: String) -> Self {
        Cell::Text(v)
    }
}
impl From<&str> for Cell {
    fn from(v: &str) -> Self {
        Cell::Text(v.to_string())
    }
}
impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(v: Option<T>) -> Self {
        v.map_or(Cell::Null, Into::into)
    }
}
impl From<Vec<u32>> for Cell {
    /// Item lists (flipped examples) as one space-separated field, so CSV
    /// stays one row per suite.
    fn from(v: Vec<u32>) -> Self {
        Cell::Text(v.iter().map(u32::to_string).collect::<Vec<_>>().join(" "))
    }
}

/// A query answer: column names and rows of cells. Serialises (JSON) as an
/// array of objects keyed by column, in column order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

/// A typed row that can become a [`Table`] row.
pub trait TableRow {
    const COLUMNS: &'static [&'static str];
    fn cells(&self) -> Vec<Cell>;
}

/// Implements [`TableRow`] for a struct by listing its fields in column
/// order; each field must convert into a [`Cell`].
macro_rules! table_row {
    ($ty:ty { $($field:ident),* $(,)? }) => {
        impl $crate::table::TableRow for $ty {
            const COLUMNS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn cells(&self) -> Vec<$crate::table::Cell> {
                vec![$($crate::table::Cell::from(self.$field.clone())),*]
            }
        }
    };
}
pub(crate) use table_row;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Csv,
}

impl Table {
    pub fn from_rows<R: TableRow>(rows: &[R]) -> Table {
        Table {
            columns: R::COLUMNS.iter().map(|c| c.to_string()).collect(),
            rows: rows.iter().map(TableRow::cells).collect(),
        }
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Table => self.to_text(),
            Format::Csv => self.to_csv(),
            Format::Json => {
                // Serialising cells and strings cannot fail.
                let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
                s.push('\n');
                s
            }
        }
    }

    /// Aligned columns: numbers right-aligned, text left-aligned, hashes
    /// shortened to 12 characters (the full hash is in JSON and CSV).
    pub fn to_text(&self) -> String {
        use std::fmt::Write as _;
        // Every cell is formatted once into one flat buffer (a 2000-row
        // drift table is ~25 000 cells and this is on the CLI's critical
        // path), remembering where each cell starts and its width in chars.
        let ncols = self.columns.len();
        let mut buf = String::with_capacity(self.rows.len() * ncols * 10);
        let mut cells: Vec<(usize, usize, usize)> = Vec::with_capacity(self.rows.len() * ncols);
        for row in &self.rows {
            for (cell, name) in row.iter().zip(&self.columns) {
                let start = buf.len();
                match cell {
                    Cell::Null => buf.push('-'),
                    Cell::Int(i) => {
                        let _ = write!(buf, "{i}");
                    }
                    Cell::Real(r) => {
                        let _ = write!(buf, "{r:.4}");
                    }
                    // By characters: `sql` can put any text in a *hash column.
                    Cell::Text(t) if name.ends_with("hash") => buf.extend(t.chars().take(12)),
                    Cell::Text(t) => buf.push_str(t),
                }
                let text = &buf[start..];
                let width = if text.is_ascii() { text.len() } else { text.chars().count() };
                cells.push((start, buf.len(), width));
            }
        }
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for (i, &(_, _, w)) in cells.iter().enumerate() {
            let col = i % ncols.max(1);
            widths[col] = widths[col].max(w);
        }
        let numeric: Vec<bool> = (0..ncols)
            .map(|i| {
                self.rows.iter().any(|r| matches!(r.get(i), Some(Cell::Int(_) | Cell::Real(_))))
                    && self.rows.iter().all(|r| !matches!(r.get(i), Some(Cell::Text(_))))
            })
            .collect();
        let line_len: usize = widths.iter().sum::<usize>() + 2 * ncols + 1;
        let mut out = String::with_capacity(line_len * (self.rows.len() + 2));
        let line = |out: &mut String, cells: &mut dyn Iterator<Item = (&str, usize)>| {
            let start = out.len();
            for (i, (cell, w)) in cells.enumerate() {
                let pad = widths[i].saturating_sub(w);
                if i > 0 {
                    out.push_str("  ");
                }
                if numeric[i] {
                    out.extend(std::iter::repeat_n(' ', pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            let end = out[start..].trim_end().len();
            out.truncate(start + end);
            out.push('\n');
        };
        line(&mut out, &mut self.columns.iter().map(|c| (c.as_str(), c.chars().count())));
        for row in cells.chunks(ncols.max(1)) {
            line(&mut out, &mut row.iter().map(|&(a, b, w)| (&buf[a..b], w)));
        }
        if self.rows.is_empty() {
            out.push_str("(no rows)\n");
        }
        out
    }

    /// RFC 4180: fields with a comma, quote or line break are quoted, quotes
    /// doubled; NULL is an empty field.
    pub fn to_csv(&self) -> String {
        fn field(s: &str) -> String {
            if s.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: Vec<String>| {
            out.push_str(&cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
        };
        line(&mut out, self.columns.clone());
        for row in &self.rows {
            line(&mut out, row.iter().map(Cell::exact).collect());
        }
        out
    }
}

impl Serialize for Table {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        struct Row<'a>(&'a [String], &'a [Cell]);
        impl Serialize for Row<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut m = s.serialize_map(Some(self.0.len()))?;
                for (k, v) in self.0.iter().zip(self.1) {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
        }
        let mut seq = s.serialize_seq(Some(self.rows.len()))?;
        for r in &self.rows {
            seq.serialize_element(&Row(&self.columns, r))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            columns: vec!["suite".into(), "accuracy".into(), "n".into(), "checkpoint_hash".into()],
            rows: vec![
                vec![Cell::Text("add, L1".into()), Cell::Real(0.5), Cell::Int(10), Cell::Text("0123456789abcdef".into())],
                vec![Cell::Text("say \"hi\"".into()), Cell::Null, Cell::Int(0), Cell::Null],
            ],
        }
    }

    #[test]
    fn csv_quotes_and_nulls() {
        assert_eq!(
            sample().to_csv(),
            "suite,accuracy,n,checkpoint_hash\r\n\"add, L1\",0.5,10,0123456789abcdef\r\n\"say \"\"hi\"\"\",,0,\r\n"
        );
    }

    #[test]
    fn json_is_objects_in_column_order() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"[{"suite":"add, L1","accuracy":0.5,"n":10,"checkpoint_hash":"0123456789abcdef"},{"suite":"say \"hi\"","accuracy":null,"n":0,"checkpoint_hash":null}]"#
        );
    }

    #[test]
    fn text_aligns_and_shortens_hashes() {
        let text = sample().to_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "suite     accuracy   n  checkpoint_hash");
        assert_eq!(lines[1], "add, L1     0.5000  10  0123456789ab");
        assert_eq!(lines[2], "say \"hi\"         -   0  -");
    }

    #[test]
    fn nan_becomes_null() {
        assert_eq!(Cell::from(f64::NAN), Cell::Null);
        assert_eq!(Cell::from(Some(1.5)), Cell::Real(1.5));
        assert_eq!(Cell::from(None::<String>), Cell::Null);
    }
}
