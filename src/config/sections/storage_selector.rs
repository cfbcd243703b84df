//! Disk selectors (`root_device`, `cache_device`, a custom disk's `select`): which of a
//! machine's commissioned disks a template means, written without knowing the machine.
//!
//! A string is a kernel name (`"sda"`, `"/dev/sda"`) or a by-id path
//! (`"/dev/disk/by-id/..."`); a table gives any of name, serial, id_path, model, bus,
//! rotational, min_size, max_size, index, and `pick` among the disks that match.

use super::super::absolute_size;
use crate::config::diagnostics::Problems;
use crate::config::model::{DiskPick, DiskSelector};
use crate::config::read::TableReader;
use crate::config::syntax::{Item, Value};

pub const SELECTOR_KEYS: &[&str] = &[
    "name",
    "serial",
    "id_path",
    "model",
    "bus",
    "rotational",
    "min_size",
    "max_size",
    "index",
    "pick",
];

const BY_ID: &str = "/dev/disk/by-id/";

pub fn read(item: &Item<'_, '_>, key: &str, problems: &mut Problems) -> Option<DiskSelector> {
    match &item.value {
        Value::String(text) => from_string(text, item, key, problems),
        Value::Table(_) => from_table(item, problems),
        other => {
            problems.error(
                item.span,
                format!(
                    "`{key}` must be a disk name, a /dev/disk/by-id/ path or a selector table such as {{ serial = \"...\" }}, found {}",
                    other.type_name()
                ),
            );
            None
        }
    }
}

fn from_string(
    text: &str,
    item: &Item<'_, '_>,
    key: &str,
    problems: &mut Problems,
) -> Option<DiskSelector> {
    if text.starts_with(BY_ID) && text.len() > BY_ID.len() {
        return Some(DiskSelector {
            id_path: Some(text.to_string()),
            ..DiskSelector::default()
        });
    }
    let name = text.strip_prefix("/dev/").unwrap_or(text);
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !plain {
        problems.error(
            item.span,
            format!(
                "`{key}` = `{text}` is neither a disk name (`sda`, `nvme0n1`) nor a {BY_ID} path"
            ),
        );
        return None;
    }
    Some(DiskSelector {
        name: Some(name.to_string()),
        ..DiskSelector::default()
    })
}

fn from_table(item: &Item<'_, '_>, problems: &mut Problems) -> Option<DiskSelector> {
    let reader = TableReader::from_item(item, "a disk selector", problems)?;
    reader.check_keys(SELECTOR_KEYS, problems);
    let pick = reader.choice("pick", &["first", "smallest", "largest"], problems);
    let selector = DiskSelector {
        name: reader.owned_string("name", problems),
        serial: reader.owned_string("serial", problems),
        id_path: reader.owned_string("id_path", problems),
        model: reader.owned_string("model", problems),
        bus: reader.owned_string("bus", problems),
        rotational: reader
            .boolean("rotational", problems)
            .map(|flag| flag.value),
        min_size: absolute_size(&reader, "min_size", problems).map(|size| size.value),
        max_size: absolute_size(&reader, "max_size", problems).map(|size| size.value),
        index: reader
            .integer("index", 0, 255, problems)
            .map(|index| index.value as u32),
        pick: match pick.map(|pick| pick.value) {
            Some("smallest") => DiskPick::Smallest,
            Some("largest") => DiskPick::Largest,
            _ => DiskPick::First,
        },
    };
    if let (Some(min), Some(max)) = (selector.min_size, selector.max_size) {
        if min > max {
            let span = reader.key_span("max_size").unwrap_or(item.span);
            problems.error(span, "`max_size` is below `min_size`: no disk can match");
        }
    }
    Some(selector)
}
