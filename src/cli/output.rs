//! Human output: tables, sizes, colour only on a terminal (and never with NO_COLOR).

use comfy_table::{presets, Cell, Color, ContentArrangement, Table};
use fleet::model::{Status, StatusKind};
use std::io::IsTerminal;

pub fn colour_enabled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    if !colour_enabled() {
        table.force_no_tty();
    }
    table.set_header(header.iter().map(Cell::new));
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// A status cell: red when failed, yellow while in progress.
pub fn status_cell(status: Status) -> Cell {
    let cell = Cell::new(status.as_str());
    if !colour_enabled() {
        return cell;
    }
    match status.kind() {
        StatusKind::Failed => cell.fg(Color::Red),
        StatusKind::InProgress => cell.fg(Color::Yellow),
        StatusKind::Resting if status == Status::Broken => cell.fg(Color::Red),
        StatusKind::Resting => cell,
    }
}

/// Bytes as a short size (`1.5 TiB`, `512 MiB`).
pub fn bytes(size: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = size as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value
        .map(|value| value.to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_well() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(8 * 1024 * 1024 * 1024), "8 GiB");
        assert_eq!(super::bytes(1536 * 1024 * 1024), "1.5 GiB");
    }
}
