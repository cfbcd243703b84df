//! Rendering a plan for people (stable, diffable: the same plan gives the same bytes) and as
//! JSON (the documented `--json` shape: the [`Plan`] struct itself).

use super::{Change, MachinePlan, Operation, Plan, Step, StepClass};
use crate::model::Action;
use std::collections::HashMap;
use std::fmt::Write;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RenderOptions {
    /// ANSI colours (only on a terminal; the caller decides).
    pub colour: bool,
    /// Also list the machines that need nothing.
    pub show_unchanged: bool,
}

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const CYAN: &str = "\x1b[36m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn paint(text: &str, colour: &str, options: RenderOptions) -> String {
    if options.colour {
        format!("{colour}{text}{RESET}")
    } else {
        text.to_string()
    }
}

fn change_colour(change: Change) -> &'static str {
    match change {
        Change::Create => GREEN,
        Change::Update | Change::Waiting => YELLOW,
        Change::Destroy | Change::Replace | Change::Blocked => RED,
        Change::Discovered | Change::None => CYAN,
    }
}

/// The plan as a person reads it; ends with the summary line.
pub fn render_human(plan: &Plan, options: RenderOptions) -> String {
    // About 80 bytes per machine at scale: reserved once rather than grown (and copied) often.
    let mut whole = String::with_capacity(plan.machines.len() * 80);
    render_human_in_parts(plan, options, |part| {
        whole.push_str(part);
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    whole
}

/// Text rendered before it is handed to the caller's `write` (a few hundred machines').
const RENDERED_PART_BYTES: usize = 1 << 16;

/// [`render_human`], handed to `write` part by part as it is rendered: `fleet plan` prints a
/// large plan without holding all of its text (18 MB for 100,000 machines).
pub fn render_human_in_parts<E>(
    plan: &Plan,
    options: RenderOptions,
    mut write: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let mut text = String::with_capacity(2 * RENDERED_PART_BYTES);
    let unchanged = plan.machines.iter().filter(|m| is_unchanged(m)).count();
    // The first machine each layout was shown under: the others name it instead of repeating
    // the table (100,000 machines share a handful of layouts).
    let mut shown_layouts: HashMap<&str, &str> = HashMap::new();
    // Some text was handed over already (the summary is then set apart by a blank line).
    let mut written = false;
    for machine in &plan.machines {
        if is_unchanged(machine) && !options.show_unchanged {
            continue;
        }
        render_machine(machine, options, &mut text);
        if will_deploy(machine) {
            render_deployment(plan, machine, &mut shown_layouts, &mut text);
        }
        render_noted(machine, options, &mut text);
        if text.len() >= RENDERED_PART_BYTES {
            write(&text)?;
            text.clear();
            written = true;
        }
    }
    if unchanged > 0 && !options.show_unchanged {
        let noun = if unchanged == 1 {
            "machine needs"
        } else {
            "machines need"
        };
        let _ = writeln!(text, "{unchanged} {noun} no change.");
    }
    if written || !text.is_empty() {
        text.push('\n');
    }
    let summary = summary_line(plan);
    text.push_str(&paint(&summary, BOLD, options));
    text.push('\n');
    write(&text)
}

/// Nothing to do and nothing to note.
fn is_unchanged(machine: &MachinePlan) -> bool {
    machine.change == Change::None && machine.noted.is_empty() && machine.clone_toml.is_none()
}

/// Its steps deploy it: its layout, network and addresses are shown.
fn will_deploy(machine: &MachinePlan) -> bool {
    machine.deployment.is_some()
        && machine.steps.iter().any(|step| {
            matches!(
                step.operation,
                Operation::Act {
                    action: Action::Deploy,
                    ..
                }
            )
        })
}

/// The compact table of what the machine is deployed with: storage (the layout's own table,
/// once per layout), network, addresses and notes.
fn render_deployment<'p>(
    plan: &'p Plan,
    machine: &'p MachinePlan,
    shown_layouts: &mut HashMap<&'p str, &'p str>,
    text: &mut String,
) {
    let Some(deployment) = &machine.deployment else {
        return;
    };
    let _ = writeln!(text, "      deployment ({}):", deployment.origin);
    if let Some(template) = &deployment.storage_template {
        let firmware = deployment
            .firmware
            .map(|firmware| format!(" ({})", firmware.as_str()))
            .unwrap_or_default();
        match &deployment.layout {
            Some(digest) => match shown_layouts.get(digest.as_str()) {
                Some(first) => {
                    let _ = writeln!(
                        text,
                        "        storage {template}{firmware}: layout {digest}, as {first} above"
                    );
                }
                None => {
                    shown_layouts.insert(digest, &machine.name);
                    let _ = writeln!(
                        text,
                        "        storage {template}{firmware}: layout {digest}"
                    );
                    if let Some(layout) = plan.layouts.get(digest) {
                        push_lines(text, &layout.table(10));
                    }
                }
            },
            None => {
                let _ = writeln!(text, "        storage {template}: not resolved yet");
            }
        }
    }
    if let Some(template) = &deployment.network_template {
        match (&deployment.network, &deployment.network_digest) {
            (Some(network), Some(digest)) => {
                let _ = writeln!(text, "        network {template}: {digest}");
                push_lines(text, &network.table(10));
            }
            _ => {
                let _ = writeln!(text, "        network {template}: not rendered yet");
            }
        }
    }
    for address in &machine.addresses {
        let origin = match address.origin {
            super::AddressOrigin::Static => "static",
            super::AddressOrigin::Held => "held",
            super::AddressOrigin::Allocated => "allocated",
        };
        let _ = writeln!(
            text,
            "        address {} {} on {} ({origin})",
            address.interface, address.ip, address.subnet
        );
    }
    for note in &deployment.notes {
        let _ = writeln!(text, "        note: {note}");
    }
}

/// A table a layout or network configuration rendered (already indented), newline-ended.
fn push_lines(text: &mut String, table: &str) {
    if table.is_empty() {
        return;
    }
    text.push_str(table);
    if !table.ends_with('\n') {
        text.push('\n');
    }
}

/// The differences that make no step, grouped by why, and the TOML that keeps a recorded clone.
fn render_noted(machine: &MachinePlan, options: RenderOptions, text: &mut String) {
    let mut notes: Vec<&str> = Vec::new();
    for noted in &machine.noted {
        if !notes.contains(&noted.note.as_str()) {
            notes.push(&noted.note);
        }
    }
    for note in notes {
        let _ = writeln!(text, "      {note} (no step):");
        for noted in machine.noted.iter().filter(|noted| noted.note == note) {
            if let Some(from) = &noted.from {
                let line = format!("-{} = {from}", noted.field);
                let _ = writeln!(text, "         {}", paint(&line, RED, options));
            }
            if let Some(to) = &noted.to {
                let line = format!("+{} = {to}", noted.field);
                let _ = writeln!(text, "         {}", paint(&line, GREEN, options));
            }
        }
    }
    if let Some(toml) = &machine.clone_toml {
        let _ = writeln!(text, "      to keep the clone, add to its [[machine]]:");
        let _ = writeln!(text, "        {toml}");
    }
}

fn render_machine(machine: &MachinePlan, options: RenderOptions, text: &mut String) {
    let glyph = paint(
        &format!("{:>3}", machine.change.glyph()),
        change_colour(machine.change),
        options,
    );
    let observed = machine
        .observed
        .as_ref()
        .map(|state| state.status.as_str())
        .unwrap_or("absent");
    let heading = match machine.desired {
        Some(desired) => format!("{observed} → {desired}"),
        None => format!("{observed}, not declared"),
    };
    let _ = writeln!(
        text,
        "{glyph} {}  ({heading})",
        paint(&machine.name, BOLD, options)
    );
    for (index, step) in machine.steps.iter().enumerate() {
        render_step(index + 1, step, options, text);
        if matches!(step.operation, super::Operation::Configure { .. }) {
            render_attributes(machine, options, text);
        }
    }
    if let Some(waiting) = &machine.waiting {
        let _ = writeln!(text, "      waiting: {waiting}");
    }
    for reason in &machine.blocked {
        let _ = writeln!(text, "      {}: {reason}", paint("held", RED, options));
    }
    if let Some(toml) = &machine.adopt_toml {
        let _ = writeln!(text, "      discovered: to adopt it, declare");
        for line in toml.lines() {
            let _ = writeln!(text, "        {line}");
        }
    }
}

fn render_step(number: usize, step: &Step, options: RenderOptions, text: &mut String) {
    let class = match step.class {
        StepClass::Safe => String::new(),
        StepClass::Disruptive => format!(" {}", paint("[disruptive]", YELLOW, options)),
        StepClass::Destructive => format!(" {}", paint("[destructive]", RED, options)),
    };
    // Pushed piece by piece: `writeln!` with padding was most of the rendering's time at scale.
    let _ = write!(text, "      {number}. ");
    push_padded(text, step.verb(), 12);
    text.push_str(" → ");
    push_padded(text, step.expect.as_str(), 12);
    text.push(' ');
    text.push_str(&step.reason);
    text.push_str(&class);
    text.push('\n');
}

/// `{:<width$}` for `value`: left-aligned, padded with spaces to `width` characters.
fn push_padded(text: &mut String, value: &str, width: usize) {
    text.push_str(value);
    let count = value.chars().count();
    text.extend(std::iter::repeat_n(' ', width.saturating_sub(count)));
}

/// The attribute changes as a unified diff of `field = value` lines.
fn render_attributes(machine: &MachinePlan, options: RenderOptions, text: &mut String) {
    let line = |field: &str, value: &Option<String>| match value {
        Some(value) => format!("{field} = {value}\n"),
        None => String::new(),
    };
    let before: String = machine
        .attributes
        .iter()
        .map(|change| line(&change.field, &change.from))
        .collect();
    let after: String = machine
        .attributes
        .iter()
        .map(|change| line(&change.field, &change.to))
        .collect();
    let diff = similar::TextDiff::from_lines(&before, &after);
    let unified = diff
        .unified_diff()
        .context_radius(1)
        .header("store", "fleet files")
        .to_string();
    for line in unified.lines() {
        let coloured = if line.starts_with('+') && !line.starts_with("+++") {
            paint(line, GREEN, options)
        } else if line.starts_with('-') && !line.starts_with("---") {
            paint(line, RED, options)
        } else {
            line.to_string()
        };
        let _ = writeln!(text, "         {coloured}");
    }
}

/// "Plan: 3 to commission, 2 to deploy, 1 to release (destructive)." and the machines that
/// wait, are held or were discovered.
pub fn summary_line(plan: &Plan) -> String {
    let summary = &plan.summary;
    let mut line = if summary.steps.is_empty() {
        "No changes.".to_string()
    } else {
        let parts: Vec<String> = summary
            .steps
            .iter()
            .map(|count| {
                let destructive = if count.destructive {
                    " (destructive)"
                } else {
                    ""
                };
                format!("{} to {}{destructive}", count.count, count.verb)
            })
            .collect();
        format!("Plan: {}.", parts.join(", "))
    };
    let mut notes = Vec::new();
    if summary.blocked > 0 {
        notes.push(format!("{} held back", summary.blocked));
    }
    if summary.waiting > 0 {
        notes.push(format!("{} waiting", summary.waiting));
    }
    if summary.discovered > 0 {
        notes.push(format!("{} discovered", summary.discovered));
    }
    if summary.on_redeploy > 0 {
        notes.push(format!(
            "{} with changes that take effect on redeploy",
            summary.on_redeploy
        ));
    }
    if !notes.is_empty() {
        let _ = write!(line, " {}.", notes.join(", "));
    }
    line
}

/// The plan as pretty JSON (the `--json` and `--out` shape), newline-terminated.
pub fn render_json(plan: &Plan) -> String {
    let mut text = serde_json::to_string_pretty(plan).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

#[cfg(test)]
mod parts_tests {
    use super::*;

    /// Handed over in parts, the text is the whole one, the blank line before the summary
    /// included (1,000 machines make several parts).
    #[test]
    fn parts_make_the_whole_text() {
        let text = crate::config::synthetic_fleet_toml(1000);
        let fleet = match crate::config::load_str("synthetic.toml", &text) {
            Ok(fleet) => fleet,
            Err(diagnostics) => panic!("{}", diagnostics.render(false)),
        };
        let plan = crate::plan::plan(&fleet, &crate::plan::Observed::default());
        let options = RenderOptions {
            colour: false,
            show_unchanged: false,
        };
        let mut parts = Vec::new();
        render_human_in_parts(&plan, options, |part| {
            parts.push(part.to_string());
            Ok::<(), ()>(())
        })
        .expect("nothing fails");
        assert!(parts.len() > 2, "{} parts", parts.len());
        let whole = render_human(&plan, options);
        assert_eq!(parts.concat(), whole);
        let summary = format!("\n\n{}\n", summary_line(&plan));
        assert!(whole.ends_with(&summary), "the summary is set apart");
    }
}
