//! Rendering answers as a table, JSON or YAML.

use serde_json::Value;

use crate::cli::Format;

/// Renders `v`: JSON and YAML as they are; a table with `columns` for a list (all scalar
/// fields of the first row when none are given), key–value lines for an object.
pub fn render(v: &Value, format: Format, columns: &[&str]) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(v).unwrap_or_default()),
        Format::Yaml => serde_yaml::to_string(v).unwrap_or_default(),
        Format::Table => table(v, columns),
    }
}

fn table(v: &Value, columns: &[&str]) -> String {
    match v {
        Value::Array(rows) => {
            let cols: Vec<String> = if columns.is_empty() {
                rows.first()
                    .and_then(Value::as_object)
                    .map(|o| {
                        o.iter()
                            .filter(|(_, v)| !v.is_object())
                            .map(|(k, _)| k.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                columns.iter().map(|c| (*c).to_owned()).collect()
            };
            let mut grid = vec![cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>()];
            for r in rows {
                grid.push(cols.iter().map(|c| cell(c, &r[c.as_str()])).collect());
            }
            align(&grid)
        }
        Value::Object(o) => {
            let width = o.keys().map(|k| k.len()).max().unwrap_or(0);
            let mut out = String::new();
            for (k, v) in o {
                let text = match v {
                    Value::Object(_) => serde_json::to_string_pretty(v).unwrap_or_default(),
                    _ => cell(k, v),
                };
                out.push_str(&format!("{k:width$}  {text}\n"));
            }
            out
        }
        Value::Null => String::new(),
        other => format!("{}\n", cell("", other)),
    }
}

/// One value as a cell: strings bare, lists comma-separated, times (`*_at`) as UTC.
pub fn cell(column: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) if column.ends_with("_at") || column == "at" => n
            .as_i64()
            .filter(|t| *t > 0)
            .map(utc)
            .unwrap_or_else(|| n.to_string()),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            let parts: Vec<String> = a.iter().map(|x| cell("", x)).collect();
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join(",")
            }
        }
        other => other.to_string(),
    }
}

/// Rows of cells as left-aligned columns, two spaces apart (the first row is the header).
pub fn align(grid: &[Vec<String>]) -> String {
    let n = grid.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..n)
        .map(|i| grid.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn lists_are_aligned_tables() {
        let v = json!([{"name": "a", "versions": [1, 2]}, {"name": "long-name", "versions": []}]);
        assert_eq!(
            render(&v, Format::Table, &["name", "versions"]),
            "NAME       VERSIONS\na          1,2\nlong-name  -\n"
        );
    }
}
