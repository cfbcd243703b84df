//! The fact-line parser: what the built-in commissioning scripts print, read into an
//! [`Inventory`]. Pure: text in, values out. The format is documented in the parent module.

use crate::model::names::MacAddr;
use crate::model::records::{Disk, Hardware, Interface};
use serde_json::{Map, Value};

/// What commissioning found about one machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    pub arch: Option<String>,
    pub hardware: Hardware,
    pub interfaces: Vec<Interface>,
    pub disks: Vec<Disk>,
}

/// One fact line that could not be read. The line is skipped, nothing of it is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{script}, line {line}: {reason}")]
pub struct FactProblem {
    pub script: String,
    /// 1-based line number in the script's stdout.
    pub line: usize,
    pub reason: String,
}

impl Inventory {
    /// The inventory found in the stdout of several scripts (name, stdout), read in order: a
    /// later disk, interface, PCI or USB device of the same name replaces an earlier one.
    pub fn from_results<'a>(
        results: impl Iterator<Item = (&'a str, &'a str)>,
    ) -> (Inventory, Vec<FactProblem>) {
        let mut inventory = Inventory::default();
        let mut problems = Vec::new();
        for (script_name, stdout) in results {
            problems.extend(parse_facts(script_name, stdout, &mut inventory));
        }
        (inventory, problems)
    }
}

/// Reads the fact lines in `stdout` into `inventory`. Lines of unknown kinds (and blank lines)
/// are ignored; a malformed line of a known kind is skipped and reported with its number.
pub fn parse_facts(script_name: &str, stdout: &str, inventory: &mut Inventory) -> Vec<FactProblem> {
    let mut problems = Vec::new();
    for (index, line) in stdout.lines().enumerate() {
        if let Err(reason) = apply_line(line, inventory) {
            problems.push(FactProblem {
                script: script_name.to_string(),
                line: index + 1,
                reason,
            });
        }
    }
    problems
}

type Applier = fn(&Fields, &mut Inventory) -> Result<(), String>;

fn apply_line(line: &str, inventory: &mut Inventory) -> Result<(), String> {
    let line = line.trim_matches(is_blank);
    let (kind, rest) = line.split_once(is_separator).unwrap_or((line, ""));
    let apply: Applier = match kind {
        "arch" => apply_arch,
        "cpu" => apply_cpu,
        "memory" => apply_memory,
        "disk" => apply_disk,
        "interface" => apply_interface,
        "pci" => apply_pci,
        "usb" => apply_usb,
        "dmi" => apply_dmi,
        _ => return Ok(()),
    };
    let fields = Fields::parse(rest)?;
    apply(&fields, inventory).map_err(|reason| format!("{kind}: {reason}"))
}

fn apply_arch(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    let name = fields.required_text("name")?.to_string();
    inventory.arch = Some(name);
    facts_object(&mut inventory.hardware).insert("arch".into(), fields.to_json());
    Ok(())
}

fn apply_cpu(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    let count = fields.required_number("count")?;
    let speed = fields.number("mhz")?;
    let hardware = &mut inventory.hardware;
    hardware.cpus = Some(count);
    hardware.cpu_model = fields.text("model").map(str::to_string);
    hardware.cpu_speed_mhz = speed;
    facts_object(hardware).insert("cpu".into(), fields.to_json());
    Ok(())
}

fn apply_memory(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    let kib = fields.required_number("kib")?;
    // Installed memory when the script could read it (never less than what the kernel sees).
    let installed = fields
        .number("installed_kib")?
        .filter(|installed| *installed >= kib);
    inventory.hardware.memory_mib = Some(installed.unwrap_or(kib) / 1024);
    facts_object(&mut inventory.hardware).insert("memory".into(), fields.to_json());
    Ok(())
}

fn apply_disk(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    let disk = Disk {
        name: fields.required_text("name")?.to_string(),
        model: fields.text("model").map(str::to_string),
        serial: fields.text("serial").map(str::to_string),
        id_path: fields.text("id_path").map(str::to_string),
        bus: fields.text("bus").map(str::to_string),
        size_bytes: fields.required_number("size")?,
        block_size: fields.number("block_size")?,
        rotational: fields.flag("rotational")?,
    };
    inventory.disks.retain(|known| known.name != disk.name);
    inventory.disks.push(disk);
    Ok(())
}

fn apply_interface(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    let mac_text = fields.required_text("mac")?;
    let link_up = match fields.text("link") {
        None => None,
        Some("up") => Some(true),
        Some("down") => Some(false),
        Some(other) => return Err(format!("link is `{other}`, expected up or down")),
    };
    let interface = Interface {
        name: fields.required_text("name")?.to_string(),
        mac: MacAddr::parse(mac_text).map_err(|error| error.to_string())?,
        link_up,
        speed_mbps: fields.number("speed")?,
        driver: fields.text("driver").map(str::to_string),
    };
    inventory
        .interfaces
        .retain(|known| known.name != interface.name);
    inventory.interfaces.push(interface);
    Ok(())
}

fn apply_pci(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    add_device(fields, "slot", "pci", inventory)
}

fn apply_usb(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    add_device(fields, "path", "usb", inventory)
}

/// Adds a device to the `list` array of the facts, replacing one with the same `identity`.
fn add_device(
    fields: &Fields,
    identity: &str,
    list: &str,
    inventory: &mut Inventory,
) -> Result<(), String> {
    let id = Value::from(fields.required_text(identity)?);
    let facts = facts_object(&mut inventory.hardware);
    let devices = facts
        .entry(list)
        .or_insert_with(|| Value::Array(Vec::new()));
    if !devices.is_array() {
        *devices = Value::Array(Vec::new());
    }
    let devices = devices.as_array_mut().expect("made an array just above");
    devices.retain(|device| device.get(identity) != Some(&id));
    devices.push(fields.to_json());
    Ok(())
}

fn apply_dmi(fields: &Fields, inventory: &mut Inventory) -> Result<(), String> {
    facts_object(&mut inventory.hardware).insert("dmi".into(), fields.to_json());
    Ok(())
}

/// The hardware's facts as a JSON object (they start as `null`).
fn facts_object(hardware: &mut Hardware) -> &mut Map<String, Value> {
    if !hardware.facts.is_object() {
        hardware.facts = Value::Object(Map::new());
    }
    hardware
        .facts
        .as_object_mut()
        .expect("made an object just above")
}

/// The `key=value` pairs of one line, in order.
#[derive(Debug)]
struct Fields(Vec<(String, String)>);

impl Fields {
    fn parse(text: &str) -> Result<Fields, String> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut rest = text.trim_start_matches(is_separator);
        while !rest.is_empty() {
            let (key, after_key) = split_key(rest)?;
            let (value, after_value) = match after_key.strip_prefix('"') {
                Some(quoted) => split_quoted(quoted)?,
                None => split_bare(after_key)?,
            };
            if pairs.iter().any(|(known, _)| known == key) {
                return Err(format!("key `{key}` appears twice"));
            }
            pairs.push((key.to_string(), value));
            rest = after_value.trim_start_matches(is_separator);
        }
        Ok(Fields(pairs))
    }

    fn get(&self, key: &str) -> Option<&str> {
        let pair = self.0.iter().find(|(known, _)| known == key);
        pair.map(|(_, value)| value.as_str())
    }

    /// The value, or None when the key is absent or its value empty.
    fn text(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|value| !value.is_empty())
    }

    fn required_text(&self, key: &str) -> Result<&str, String> {
        self.text(key).ok_or_else(|| format!("no `{key}`"))
    }

    /// A whole number of at least 0, or None when absent or empty.
    fn number(&self, key: &str) -> Result<Option<i64>, String> {
        let Some(text) = self.text(key) else {
            return Ok(None);
        };
        let bad = || format!("{key} is `{text}`, expected a whole number");
        if !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(bad());
        }
        text.parse::<i64>().map(Some).map_err(|_| bad())
    }

    fn required_number(&self, key: &str) -> Result<i64, String> {
        self.number(key)?.ok_or_else(|| format!("no `{key}`"))
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, String> {
        match self.text(key) {
            None => Ok(None),
            Some("1" | "true") => Ok(Some(true)),
            Some("0" | "false") => Ok(Some(false)),
            Some(other) => Err(format!("{key} is `{other}`, expected 0 or 1")),
        }
    }

    /// Every pair as a JSON object of strings, as printed.
    fn to_json(&self) -> Value {
        let map = self
            .0
            .iter()
            .map(|(key, value)| (key.clone(), Value::from(value.as_str())));
        Value::Object(map.collect())
    }
}

/// Splits `key=rest` off the start of `text`; a key is `[a-z0-9_]+`.
fn split_key(text: &str) -> Result<(&str, &str), String> {
    let word = &text[..text.find(is_separator).unwrap_or(text.len())];
    let Some(equals) = word.find('=') else {
        return Err(format!("`{word}` is not key=value"));
    };
    let key = &text[..equals];
    let key_character = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    if key.is_empty() || !key.chars().all(key_character) {
        return Err(format!("`{key}` is not a key (a-z, 0-9 and _)"));
    }
    Ok((key, &text[equals + 1..]))
}

/// A bare value runs to the next separator and holds no `"`.
fn split_bare(text: &str) -> Result<(String, &str), String> {
    let end = text.find(is_separator).unwrap_or(text.len());
    let value = &text[..end];
    if value.contains('"') {
        return Err(format!("`{value}` holds a `\"` but is not quoted"));
    }
    Ok((value.to_string(), &text[end..]))
}

/// A quoted value (the opening `"` already taken) runs to the next unescaped `"`; inside it
/// `\"` is `"` and `\\` is `\`. The closing quote ends the pair: a separator or the line's end
/// must follow.
fn split_quoted(text: &str) -> Result<(String, &str), String> {
    let mut value = String::new();
    let mut characters = text.char_indices();
    while let Some((index, character)) = characters.next() {
        match character {
            '"' => {
                let rest = &text[index + 1..];
                if rest.starts_with(|c: char| !is_separator(c)) {
                    return Err("text right after a closing quote".to_string());
                }
                return Ok((value, rest));
            }
            '\\' => match characters.next() {
                Some((_, escaped @ ('"' | '\\'))) => value.push(escaped),
                Some((_, other)) => {
                    return Err(format!("unknown escape `\\{other}` (only \\\" and \\\\)"))
                }
                None => break,
            },
            other => value.push(other),
        }
    }
    Err("a quoted value is not closed".to_string())
}

/// Pairs are separated by spaces (tabs are accepted too). Only these: the scripts quote a
/// value for a space alone, so other white space (U+00A0 ...) belongs to a bare value.
fn is_separator(character: char) -> bool {
    character == ' ' || character == '\t'
}

/// What surrounds a line: separators and the `\r` of a CRLF line end.
fn is_blank(character: char) -> bool {
    is_separator(character) || character == '\r'
}
