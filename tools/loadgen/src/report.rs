//! Scenario results: one human-readable line, one single-line JSON object
//! (with a `"scenario"` field, for scripts), and optionally Markdown table
//! rows appended to a file (for `tools/bench.sh`).
//!
//! JSON is written by hand: the values are flat numbers, booleans and short
//! strings, and a serializer dependency would buy nothing here.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

/// A JSON value of a result field.
#[derive(Debug, Clone)]
pub enum Val {
    U(u64),
    F(f64),
    B(bool),
    S(String),
    Null,
}

impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::U(v)
    }
}
impl From<usize> for Val {
    fn from(v: usize) -> Val {
        Val::U(v as u64)
    }
}
impl From<u32> for Val {
    fn from(v: u32) -> Val {
        Val::U(u64::from(v))
    }
}
impl From<f64> for Val {
    fn from(v: f64) -> Val {
        Val::F(v)
    }
}
impl From<bool> for Val {
    fn from(v: bool) -> Val {
        Val::B(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::S(v.to_string())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::S(v)
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::Null, Into::into)
    }
}

/// One row of the benchmark table.
#[derive(Debug, Clone)]
pub struct Row {
    pub figure: String,
    pub target: String,
    pub met: Option<bool>,
}

/// The result of one scenario run.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub human: String,
    pub fields: Vec<(String, Val)>,
    pub rows: Vec<Row>,
}

pub fn json_string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

impl Report {
    pub fn new(scenario: &str, label: String) -> Report {
        Report {
            scenario: scenario.to_string(),
            label,
            human: String::new(),
            fields: Vec::new(),
            rows: Vec::new(),
        }
    }

    /// Adds a field to the JSON line.
    pub fn set(&mut self, key: &str, v: impl Into<Val>) -> &mut Report {
        self.fields.push((key.to_string(), v.into()));
        self
    }

    /// Adds a row to the benchmark table.
    pub fn row(&mut self, figure: String, target: &str, met: Option<bool>) {
        self.rows.push(Row {
            figure,
            target: target.to_string(),
            met,
        });
    }

    pub fn json(&self) -> String {
        let mut o = String::from("{\"scenario\":");
        o.push_str(&json_string(&self.scenario));
        o.push_str(",\"label\":");
        o.push_str(&json_string(&self.label));
        for (k, v) in &self.fields {
            o.push(',');
            o.push_str(&json_string(k));
            o.push(':');
            match v {
                Val::U(x) => {
                    let _ = write!(o, "{x}");
                }
                Val::F(x) if x.is_finite() => {
                    let _ = write!(o, "{x}");
                }
                Val::F(_) | Val::Null => o.push_str("null"),
                Val::B(b) => o.push_str(if *b { "true" } else { "false" }),
                Val::S(s) => o.push_str(&json_string(s)),
            }
        }
        o.push('}');
        o
    }

    /// The Markdown rows `| scenario | figure | target | met |`.
    pub fn markdown(&self) -> String {
        let mut o = String::new();
        for r in &self.rows {
            let met = match r.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "n/a",
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} |",
                md_cell(&self.label),
                md_cell(&r.figure),
                md_cell(&r.target),
                met
            );
        }
        o
    }

    /// Prints the human line and the JSON line; appends table rows to `md`.
    pub fn emit(&self, md: Option<&Path>) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", self.human)?;
        writeln!(out, "{}", self.json())?;
        out.flush()?;
        if let Some(path) = md {
            let mut f = OpenOptions::new().create(true).append(true).open(path)?;
            f.write_all(self.markdown().as_bytes())?;
        }
        Ok(())
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Formats a number with thousands separators: 1234567 → "1,234,567".
pub fn thousands(v: u64) -> String {
    let s = v.to_string();
    let mut o = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            o.push(',');
        }
        o.push(c);
    }
    o
}

/// Bytes as MiB with one decimal.
pub fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_is_flat_and_escaped() {
        let mut r = Report::new("idle", "idle \"x\"".into());
        r.set("n", 3u64)
            .set("f", 1.5)
            .set("ok", true)
            .set("none", None::<u64>)
            .set("nan", f64::NAN)
            .set("s", "a\nb");
        assert_eq!(
            r.json(),
            r#"{"scenario":"idle","label":"idle \"x\"","n":3,"f":1.5,"ok":true,"none":null,"nan":null,"s":"a\nb"}"#
        );
    }

    #[test]
    fn markdown_rows() {
        let mut r = Report::new("idle", "idle 10 | x".into());
        r.row("1 KiB/conn".into(), "≤ 4 KiB/conn", Some(true));
        assert_eq!(
            r.markdown(),
            "| idle 10 \\| x | 1 KiB/conn | ≤ 4 KiB/conn | yes |\n"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }
}
