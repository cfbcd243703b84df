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

/// Below this many shown machines one thread renders them all (a thread costs more than it
/// saves).
const MACHINES_PER_RENDERING_THREAD: usize = 5_000;

/// [`render_human`], handed to `write` part by part as it is rendered: `fleet plan` prints a
/// large plan without holding all of its text (18 MB for 100,000 machines). A large plan's
/// second half is rendered on another thread meanwhile and held until the first is written
/// (the process is otherwise done with its second core by then).
pub fn render_human_in_parts<E>(
    plan: &Plan,
    options: RenderOptions,
    write: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let unchanged = plan.machines.iter().filter(|m| is_unchanged(m)).count();
    let shown: Vec<&MachinePlan> = plan
        .machines
        .iter()
        .filter(|machine| options.show_unchanged || !is_unchanged(machine))
        .collect();
    let first_shown = first_machine_per_layout(&shown);
    let rendering = MachinesRendering {
        plan,
        options,
        first_shown: &first_shown,
    };
    let cores = std::thread::available_parallelism().map_or(1, |cores| cores.get());
    let split = cores >= 2 && shown.len() >= 2 * MACHINES_PER_RENDERING_THREAD;
    render_shown(plan, &shown, unchanged, &rendering, split, write)
}

/// The shown machines' text, then the summary; with `split`, the second half is rendered on
/// another thread.
fn render_shown<E>(
    plan: &Plan,
    shown: &[&MachinePlan],
    unchanged: usize,
    rendering: &MachinesRendering<'_>,
    split: bool,
    mut write: impl FnMut(&str) -> Result<(), E>,
) -> Result<(), E> {
    let options = rendering.options;
    let mut text = String::with_capacity(2 * RENDERED_PART_BYTES);
    // Some text was handed over already (the summary is then set apart by a blank line).
    let written = if !split {
        rendering.run(shown, &mut text, &mut write)?
    } else {
        let (first_half, second_half) = shown.split_at(shown.len() / 2);
        std::thread::scope(|scope| {
            let later = scope.spawn(|| rendering.held(second_half));
            let written = rendering.run(first_half, &mut text, &mut write)?;
            let later = later
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            write(&text)?;
            text.clear();
            for part in &later {
                write(part)?;
            }
            Ok(written || later.iter().any(|part| !part.is_empty()))
        })?
    };
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

/// What every machine's text needs besides the machine, shared by the rendering threads.
struct MachinesRendering<'p> {
    plan: &'p Plan,
    options: RenderOptions,
    /// Each layout's table is shown under the first machine that deploys it; the others name
    /// that machine instead of repeating the table (100,000 machines share a handful).
    first_shown: &'p HashMap<&'p str, &'p str>,
}

impl MachinesRendering<'_> {
    /// Renders `machines` into `text`, handing it to `write` whenever a part is full; true
    /// when some text was handed over.
    fn run<E>(
        &self,
        machines: &[&MachinePlan],
        text: &mut String,
        write: &mut impl FnMut(&str) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut written = false;
        for machine in machines {
            self.machine(machine, text);
            if text.len() >= RENDERED_PART_BYTES {
                write(text)?;
                text.clear();
                written = true;
            }
        }
        Ok(written)
    }

    /// The whole text of `machines`, held in parts (one growing string would be copied at
    /// each doubling, and hold up to twice its text).
    fn held(&self, machines: &[&MachinePlan]) -> Vec<String> {
        let mut parts = Vec::new();
        let mut text = String::with_capacity(2 * RENDERED_PART_BYTES);
        let _ = self.run(machines, &mut text, &mut |part: &str| {
            parts.push(part.to_string());
            Ok::<(), std::convert::Infallible>(())
        });
        parts.push(text);
        parts
    }

    fn machine(&self, machine: &MachinePlan, text: &mut String) {
        render_machine(machine, self.options, text);
        if will_deploy(machine) {
            render_deployment(self.plan, machine, self.first_shown, text);
        }
        render_noted(machine, self.options, text);
    }
}

/// For each layout a shown machine deploys, the first such machine (in plan order).
fn first_machine_per_layout<'p>(shown: &[&'p MachinePlan]) -> HashMap<&'p str, &'p str> {
    let mut first = HashMap::new();
    for machine in shown.iter().filter(|machine| will_deploy(machine)) {
        let layout = machine
            .deployment
            .as_ref()
            .filter(|deployment| deployment.storage_template.is_some())
            .and_then(|deployment| deployment.layout.as_deref());
        if let Some(layout) = layout {
            first.entry(layout).or_insert(machine.name.as_str());
        }
    }
    first
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
    first_shown: &HashMap<&str, &str>,
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
            Some(digest) => match first_shown.get(digest.as_str()) {
                Some(first) if *first != machine.name => {
                    let _ = writeln!(
                        text,
                        "        storage {template}{firmware}: layout {digest}, as {first} above"
                    );
                }
                _ => {
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

    /// Split over two threads (as large plans are), the text is byte for byte the one thread's:
    /// the same order, each layout's table under the first machine that deploys it and named
    /// by the others.
    #[test]
    fn two_threads_render_what_one_renders() {
        let text = crate::config::synthetic_fleet_toml(1000);
        let fleet = crate::config::load_str("synthetic.toml", &text)
            .unwrap_or_else(|diagnostics| panic!("{}", diagnostics.render(false)));
        let observed = crate::plan::synthetic_observed(&fleet);
        let plan = crate::plan::plan(&fleet, &observed);
        let options = RenderOptions {
            colour: false,
            show_unchanged: false,
        };
        let shown: Vec<&MachinePlan> = plan.machines.iter().collect();
        let first_shown = first_machine_per_layout(&shown);
        let rendering = MachinesRendering {
            plan: &plan,
            options,
            first_shown: &first_shown,
        };
        let render = |split| {
            let mut whole = String::new();
            render_shown(&plan, &shown, 0, &rendering, split, |part| {
                whole.push_str(part);
                Ok::<(), ()>(())
            })
            .expect("nothing fails");
            whole
        };
        let (one, two) = (render(false), render(true));
        assert_eq!(one, two);
        assert!(one.contains(" above\n"), "a layout is named, not repeated");
        let tables = first_shown.len();
        assert!(
            tables >= 1 && one.matches(": layout ").count() > tables,
            "{tables} layouts"
        );
    }
}
