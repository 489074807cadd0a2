//! How the CLI prints: aligned tables for people, JSON (`-o json`) or one
//! JSON value a line (`-o jsonl`, lists) for scripts.

use serde::Serialize;
use serde_json::Value;

/// Writes to standard output; a closed pipe (`| head`) ends the output
/// quietly instead of panicking.
pub(crate) fn emit(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// `println!` through [`emit`].
macro_rules! outln {
    ($($t:tt)*) => {
        $crate::output::emit(&format!("{}\n", format_args!($($t)*)))
    };
}
pub(crate) use outln;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns.
    Table,
    /// One JSON document.
    Json,
    /// One JSON value a line (lists).
    Jsonl,
    /// Only ids, one a line (for shell variables).
    Id,
}

/// A column: its header and where its value is in each item.
pub(crate) type Column = (&'static str, &'static str);

/// The text of `item[path]` (dotted), for a table cell.
fn cell(item: &Value, path: &str) -> String {
    let mut v = item;
    for part in path.split('.') {
        v = &v[part];
    }
    match v {
        Value::Null => "-".to_owned(),
        // Times to the second, all of one width, for people.
        Value::String(s) => match s.parse::<jiff::Timestamp>() {
            Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            Err(_) => s.clone(),
        },
        other => other.to_string(),
    }
}

/// Replaces Unix epoch milliseconds with the time they name, as the API's
/// other times are written; anything else is left as it is.
pub(crate) fn millis_as_time(v: &mut Value) {
    if let Some(t) = v
        .as_i64()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
    {
        *v = Value::String(t.to_string());
    }
}

/// Aligned columns, a header first.
pub(crate) fn table(columns: &[Column], items: &[Value]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| columns.iter().map(|(_, path)| cell(item, path)).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(columns.iter().map(|(h, _)| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Prints a list.
pub(crate) fn list<T: Serialize>(format: Format, columns: &[Column], items: &[T]) {
    let items: Vec<Value> = items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect();
    match format {
        Format::Table => emit(&table(columns, &items)),
        Format::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&items).unwrap_or_default()
        ),
        Format::Jsonl => {
            for i in &items {
                outln!("{i}");
            }
        }
        Format::Id => {
            for i in &items {
                outln!("{}", cell(i, "id"));
            }
        }
    }
}

/// Prints one item: `key  value` lines for people.
pub(crate) fn one<T: Serialize>(format: Format, fields: &[Column], item: &T) {
    let item = serde_json::to_value(item).unwrap_or(Value::Null);
    match format {
        Format::Table => {
            let width = fields.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
            for (h, path) in fields {
                outln!("{h:<width$}  {}", cell(&item, path));
            }
        }
        Format::Json | Format::Jsonl => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&item).unwrap_or_default()
            )
        }
        Format::Id => {
            // An enqueue's answer carries the job under `job`.
            let id = if item["id"].is_null() {
                &item["job"]["id"]
            } else {
                &item["id"]
            };
            outln!("{}", cell(&serde_json::json!({ "id": id }), "id"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_to_the_second() {
        let items = vec![
            serde_json::json!({"at": "2026-11-28T23:12:57.761Z"}),
            serde_json::json!({"at": "2026-11-28T23:12:58Z"}),
        ];
        assert_eq!(
            table(&[("AT", "at")], &items),
            "AT\n2026-11-28T23:12:57Z\n2026-11-28T23:12:58Z\n"
        );
    }

    #[test]
    fn columns_align_and_missing_values_show_a_dash() {
        let items = vec![
            serde_json::json!({"id": "a", "state": "queued", "agent": {"name": "n1"}}),
            serde_json::json!({"id": "bbbb", "state": null}),
        ];
        let out = table(
            &[("ID", "id"), ("STATE", "state"), ("AGENT", "agent.name")],
            &items,
        );
        assert_eq!(
            out,
            "ID    STATE   AGENT\na     queued  n1\nbbbb  -       -\n"
        );
    }
}
