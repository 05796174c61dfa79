//! Formatting for people: sizes, durations, tables, the creator column.

use super::*;

/// Bytes for humans: `512 B`, `64.0 KiB`, `32.0 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Milliseconds for humans: `850ms`, `12.3s`, `5m12s`, `2h03m`, `3d04h`.
pub(crate) fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

pub(crate) fn opt_duration(ms: Option<u64>) -> String {
    ms.map(duration).unwrap_or_else(|| "-".into())
}

pub(crate) fn table(header: &[&str], right_aligned: &[usize]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING).set_header(header.to_vec());
    for &i in right_aligned {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

/// A table as text: no trailing blanks, no padding before the first column.
pub(crate) fn render(t: &Table) -> String {
    let mut s = String::new();
    for line in t.lines() {
        s.push_str(line.strip_prefix(' ').unwrap_or(&line).trim_end());
        s.push('\n');
    }
    s
}

pub(crate) fn creator_text(c: &Creator) -> String {
    match c {
        Creator::None => "-".into(),
        other => other.to_string(),
    }
}
