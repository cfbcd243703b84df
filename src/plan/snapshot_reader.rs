//! An observed snapshot's JSON read as it arrives, a part at a time ([`SnapshotReader`]): only
//! one machine's text is held at a time, never the whole text (92 MB at 100,000 machines, held
//! beside everything else while the fleet files were being read).
//!
//! The reader splits the top-level object into its members and the `machines` array into its
//! elements, and reads each element with `serde_json` as [`Observed::from_json`] would. It only
//! handles what a snapshot looks like; anything else (a key written with escapes, a second
//! `machines`, bad JSON, trailing bytes) makes it give up, and the caller reads the whole text
//! with [`Observed::from_json`] instead, which gives the same result or the same error as ever.
//! Pure: the caller does the reading.

use super::{exact, HeldAddress, Observed, ObservedMachine, MIN_OBSERVED_MACHINE_BYTES};

/// Where the reader is in the snapshot's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the opening `{`.
    Start,
    /// After `{` or `,`: a key next (or `}` right after `{`).
    Key { first: bool },
    /// Inside a key (its bytes are in `pending`).
    InKey,
    /// After a key: `:` next.
    Colon,
    /// After `:`: the member's value next.
    Value,
    /// Inside the value of a member other than `machines` (its bytes are in `pending`).
    Other(Scan),
    /// Inside `machines`: an element, `,` or `]` next.
    Machines { first: bool, after_element: bool },
    /// Inside one machine's object (its bytes are in `pending`).
    Machine(Scan),
    /// After a member: `,` or `}` next.
    AfterMember,
    /// After the closing `}`: only white space.
    Done,
    /// Not a snapshot as this reader knows it: the caller reads the whole text.
    GaveUp,
}

/// Where a scan of one JSON value is: how deep in brackets, inside a string or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Scan {
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// A number, `true`, `false` or `null` (ends at the first delimiter).
    scalar: bool,
}

/// What a scan found in a part of the text.
enum Scanned {
    /// The value goes on past this part.
    More,
    /// The value ends before this many bytes of the part.
    Ends(usize),
}

impl Scan {
    fn of(first: u8) -> Scan {
        Scan {
            scalar: !matches!(first, b'{' | b'[' | b'"'),
            ..Scan::default()
        }
    }

    fn run(&mut self, bytes: &[u8]) -> Scanned {
        if self.scalar {
            return match bytes.iter().position(|byte| is_delimiter(*byte)) {
                Some(at) => Scanned::Ends(at),
                None => Scanned::More,
            };
        }
        for (at, byte) in bytes.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if *byte == b'\\' {
                    self.escaped = true;
                } else if *byte == b'"' {
                    self.in_string = false;
                    if self.depth == 0 {
                        return Scanned::Ends(at + 1);
                    }
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.depth == 0 {
                        return Scanned::Ends(at + 1);
                    }
                }
                _ => {}
            }
        }
        Scanned::More
    }
}

fn is_delimiter(byte: u8) -> bool {
    matches!(byte, b',' | b'}' | b']') || byte.is_ascii_whitespace()
}

/// JSON's white space.
fn is_space(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

/// Which member's value is being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Member {
    Machines,
    Addresses,
    Other,
}

/// Reads a snapshot's JSON part by part ([`SnapshotReader::feed`]), then gives the snapshot
/// ([`SnapshotReader::finish`]) — or `None`, and the caller reads the whole text with
/// [`Observed::from_json`].
pub struct SnapshotReader {
    state: State,
    member: Member,
    /// The bytes of the key, value or machine being read.
    pending: Vec<u8>,
    machines: Option<Vec<ObservedMachine>>,
    addresses: Vec<HeldAddress>,
    /// Room reserved for the machines (from the text's length, as `from_json` does).
    capacity: usize,
}

impl SnapshotReader {
    /// `length`: the text's length if known (room for the machines is reserved from it).
    pub fn new(length: usize) -> SnapshotReader {
        SnapshotReader {
            state: State::Start,
            member: Member::Other,
            pending: Vec::new(),
            machines: None,
            addresses: Vec::new(),
            capacity: length / MIN_OBSERVED_MACHINE_BYTES,
        }
    }

    /// Reads the next part of the text; `false` once the reader has given up (the rest need
    /// not be fed).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() && self.state != State::GaveUp {
            let used = self.step(bytes);
            bytes = &bytes[used..];
        }
        self.state != State::GaveUp
    }

    /// The snapshot, once the whole text has been fed; `None` if the reader gave up or the
    /// text ended early.
    pub fn finish(self) -> Option<Observed> {
        if self.state != State::Done {
            return None;
        }
        Some(Observed {
            machines: self.machines?,
            addresses: self.addresses,
        })
    }

    /// One step of the state machine on the start of `bytes` (not empty); how many bytes it used.
    fn step(&mut self, bytes: &[u8]) -> usize {
        let byte = bytes[0];
        match self.state {
            State::Start
            | State::Key { .. }
            | State::Colon
            | State::Value
            | State::Machines { .. }
            | State::AfterMember
            | State::Done
                if is_space(byte) =>
            {
                bytes
                    .iter()
                    .position(|byte| !is_space(*byte))
                    .unwrap_or(bytes.len())
            }
            State::Start => self.expect(byte, b'{', State::Key { first: true }),
            State::Key { first } => match byte {
                b'"' => {
                    self.pending.clear();
                    self.state = State::InKey;
                    1
                }
                b'}' if first => self.done(),
                _ => self.give_up(),
            },
            State::InKey => self.key(bytes),
            State::Colon => self.expect(byte, b':', State::Value),
            State::Value => self.value(byte),
            State::Other(scan) => self.other(bytes, scan),
            State::Machines {
                first,
                after_element,
            } => match byte {
                b']' if first || after_element => {
                    self.state = State::AfterMember;
                    1
                }
                b',' if after_element => {
                    self.state = State::Machines {
                        first: false,
                        after_element: false,
                    };
                    1
                }
                b'{' if !after_element => {
                    self.pending.clear();
                    self.state = State::Machine(Scan::default());
                    self.machine(bytes, Scan::default())
                }
                _ => self.give_up(),
            },
            State::Machine(scan) => self.machine(bytes, scan),
            State::AfterMember => match byte {
                b',' => {
                    self.state = State::Key { first: false };
                    1
                }
                b'}' => self.done(),
                _ => self.give_up(),
            },
            State::Done | State::GaveUp => self.give_up(),
        }
    }

    fn expect(&mut self, byte: u8, wanted: u8, next: State) -> usize {
        if byte != wanted {
            return self.give_up();
        }
        self.state = next;
        1
    }

    fn give_up(&mut self) -> usize {
        self.state = State::GaveUp;
        0
    }

    fn done(&mut self) -> usize {
        self.state = State::Done;
        1
    }

    /// A key's bytes up to its closing quote; a key with an escape is left to `from_json`.
    fn key(&mut self, bytes: &[u8]) -> usize {
        let Some(end) = bytes.iter().position(|byte| matches!(byte, b'"' | b'\\')) else {
            self.pending.extend_from_slice(bytes);
            return bytes.len();
        };
        if bytes[end] == b'\\' {
            return self.give_up();
        }
        self.pending.extend_from_slice(&bytes[..end]);
        self.member = match &self.pending[..] {
            b"machines" => Member::Machines,
            b"addresses" => Member::Addresses,
            _ => Member::Other,
        };
        self.state = State::Colon;
        end + 1
    }

    fn value(&mut self, byte: u8) -> usize {
        match self.member {
            // A second `machines` is an error `from_json` names.
            Member::Machines if self.machines.is_some() || byte != b'[' => self.give_up(),
            Member::Machines => {
                self.machines = Some(Vec::with_capacity(self.capacity));
                self.state = State::Machines {
                    first: true,
                    after_element: false,
                };
                1
            }
            Member::Addresses | Member::Other => {
                self.pending.clear();
                self.state = State::Other(Scan::of(byte));
                0
            }
        }
    }

    /// The value of a member other than `machines`, read whole, then `addresses` decoded and
    /// anything else checked to be JSON (and ignored, as `from_json` ignores it).
    fn other(&mut self, bytes: &[u8], mut scan: Scan) -> usize {
        let used = match scan.run(bytes) {
            Scanned::More => {
                self.pending.extend_from_slice(bytes);
                self.state = State::Other(scan);
                return bytes.len();
            }
            Scanned::Ends(used) => used,
        };
        self.pending.extend_from_slice(&bytes[..used]);
        let read = match self.member {
            Member::Addresses => serde_json::from_slice::<Vec<HeldAddress>>(&self.pending)
                .map(|addresses| self.addresses = exact(addresses)),
            _ => serde_json::from_slice::<serde::de::IgnoredAny>(&self.pending).map(|_| ()),
        };
        if read.is_err() {
            return self.give_up();
        }
        self.state = State::AfterMember;
        used
    }

    /// One machine's object, read whole, then decoded.
    fn machine(&mut self, bytes: &[u8], mut scan: Scan) -> usize {
        let used = match scan.run(bytes) {
            Scanned::More => {
                self.pending.extend_from_slice(bytes);
                self.state = State::Machine(scan);
                return bytes.len();
            }
            Scanned::Ends(used) => used,
        };
        self.pending.extend_from_slice(&bytes[..used]);
        let Ok(machine) = serde_json::from_slice::<ObservedMachine>(&self.pending) else {
            return self.give_up();
        };
        if let Some(machines) = &mut self.machines {
            machines.push(machine);
        }
        self.state = State::Machines {
            first: false,
            after_element: true,
        };
        used
    }
}

impl Observed {
    /// Reads a snapshot's JSON from `parts` (the text in pieces, in order) without holding the
    /// whole text; `None` when [`Observed::from_json`] must read it instead (see the module).
    pub fn from_json_parts<'p>(
        length: usize,
        parts: impl IntoIterator<Item = &'p [u8]>,
    ) -> Option<Observed> {
        let mut reader = SnapshotReader::new(length);
        for part in parts {
            if !reader.feed(part) {
                return None;
            }
        }
        reader.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::{MacAddr, MachineName, PowerState, Status};

    /// Machines with what the scanner must not be fooled by: brackets, quotes and escapes in
    /// strings, nested objects, empty and missing lists.
    fn snapshot() -> Observed {
        let machine = |index: u8| ObservedMachine {
            name: MachineName::parse(&format!("m{index}")).unwrap(),
            status: Status::Ready,
            previous_status: Some(Status::Commissioning),
            status_reason: Some(format!("a \"reason\" with }} and ] and \\ {index}")),
            power: PowerState::Off,
            power_error: None,
            locked: index.is_multiple_of(2),
            owner: None,
            commissioned: true,
            deployed_os: None,
            power_type: "ipmi".into(),
            power_params: serde_json::json!({"address": "10.0.0.1", "password": {"env": "P{"}})
                .into(),
            image: Some("noble".into()),
            tags: vec!["rack-[1]".into(), "é".into()],
            arch: Some("amd64".into()),
            macs: vec![MacAddr([0x52, 0x54, 0, 0, 1, index])],
            hardware: super::super::ObservedHardware {
                cpus: Some(8),
                disk_sizes: vec![1 << 40],
                disks: vec![super::super::ObservedDisk {
                    name: "sda".into(),
                    size_bytes: 1 << 40,
                    serial: Some("S{1}".into()),
                    ..Default::default()
                }],
                ..Default::default()
            },
            generation: -3,
            heard_from: false,
            cloned_from: None,
            deployment: None,
        };
        Observed {
            machines: (0..5).map(machine).collect(),
            addresses: vec![HeldAddress {
                machine: "m1".into(),
                interface: "eth0".into(),
                subnet: "net0".into(),
                ip: "10.100.0.11".parse().unwrap(),
            }],
        }
    }

    /// Fed in parts of every size from 1 byte, the text gives what `from_json` gives.
    #[test]
    fn parts_of_any_size_give_what_the_whole_text_gives() {
        let observed = snapshot();
        let compact = serde_json::to_vec(&observed).unwrap();
        let pretty = serde_json::to_vec_pretty(&observed).unwrap();
        for text in [&compact, &pretty] {
            let whole = Observed::from_json(text).unwrap();
            assert_eq!(whole, observed);
            for size in [1, 2, 3, 7, 64, 1000, text.len()] {
                let parts = Observed::from_json_parts(text.len(), text.chunks(size));
                assert_eq!(parts.as_ref(), Some(&whole), "parts of {size} bytes");
            }
        }
    }

    /// What the reader does not handle (or what is not a snapshot) is left to `from_json`.
    #[test]
    fn anything_else_is_left_to_the_whole_text() {
        let read = |text: &str| Observed::from_json_parts(text.len(), [text.as_bytes()]);
        assert_eq!(read(r#"{"machines":[]}"#), Some(Observed::default()));
        assert_eq!(
            read(r#" { "other" : [1, {"a": "}"}], "n": -1.5e3, "machines" : [ ] } "#),
            Some(Observed::default())
        );
        for text in [
            "",
            "{",
            "{}",
            r#"{"machines":[]"#,
            r#"{"machines":[],}"#,
            r#"{"machines":[]} x"#,
            r#"{"machines":[],"machines":[]}"#,
            r#"{"mach\u0069nes":[]}"#,
            r#"{"machines":[{}]}"#,
            r#"{"machines":[,]}"#,
            r#"{"machines":{}}"#,
            r#"{"other":[1,],"machines":[]}"#,
            r#"{"addresses":[{}],"machines":[]}"#,
        ] {
            assert_eq!(read(text), None, "{text}");
        }
    }
}
