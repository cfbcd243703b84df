//! A simulated machine's hardware, and the fact lines the built-in commissioning scripts would
//! print on it (the format of `commissioning/mod.rs`), so that the controller records exactly
//! this hardware. Pure: a machine's hardware is a function of its index.

use crate::model::records::Disk;
use crate::model::MacAddr;

/// One simulated disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDisk {
    pub name: String,
    pub size_bytes: i64,
    pub serial: String,
    pub model: String,
    /// virtio, nvme, ata, scsi...
    pub bus: String,
    pub rotational: bool,
}

impl SimDisk {
    /// The by-id link udev would make for it (`nvme-MODEL_SERIAL`, `ata-MODEL_SERIAL`).
    pub fn id_path(&self) -> String {
        format!(
            "/dev/disk/by-id/{}-{}_{}",
            self.bus,
            self.model.replace(' ', "_"),
            self.serial
        )
    }
}

/// One simulated network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNic {
    pub name: String,
    pub mac: MacAddr,
    pub driver: String,
    /// Mb/s.
    pub speed: u32,
}

/// Everything commissioning finds on a simulated machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimHardware {
    pub cpus: u32,
    pub cpu_model: String,
    pub cpu_mhz: u32,
    pub memory_kib: i64,
    /// `uefi` or `bios`.
    pub firmware: String,
    pub disks: Vec<SimDisk>,
    /// The first one netboots.
    pub nics: Vec<SimNic>,
    pub vendor: String,
    pub product: String,
    pub serial: String,
}

/// Each recorded disk's name, size and serial (see [`SimHardware::disk_identities`]).
pub fn recorded_disks(disks: &[Disk]) -> Vec<(String, i64, Option<String>)> {
    disks
        .iter()
        .map(|disk| (disk.name.clone(), disk.size_bytes, disk.serial.clone()))
        .collect()
}

/// The MAC of NIC `nic` of simulated machine `index`: locally administered (0x02), so it can
/// never be a real card's.
pub fn sim_mac(index: u32, nic: u8) -> MacAddr {
    let [_, high, middle, low] = index.to_be_bytes();
    MacAddr([0x02, 0x5e, nic, high, middle, low])
}

impl SimHardware {
    /// The hardware of machine `index`: a few shapes in turn, so a fleet has variety (and the
    /// clone and layout rules have something to match), every serial and MAC its own.
    pub fn for_index(index: u32) -> SimHardware {
        let shape = index % 3;
        let gib = 1i64 << 30;
        let disk = |n: usize, size_gib: i64, bus: &str, model: &str, rotational: bool| SimDisk {
            name: match bus {
                "nvme" => format!("nvme{n}n1"),
                _ => format!("sd{}", char::from(b'a' + n as u8)),
            },
            size_bytes: size_gib * gib,
            serial: format!("SIM{index:05}D{n}"),
            model: model.to_string(),
            bus: bus.to_string(),
            rotational,
        };
        let disks = match shape {
            0 => vec![disk(0, 480, "nvme", "SIM NVMe 480", false)],
            1 => vec![
                disk(0, 240, "ata", "SIM SSD 240", false),
                disk(1, 2000, "ata", "SIM HDD 2000", true),
            ],
            _ => vec![
                disk(0, 960, "nvme", "SIM NVMe 960", false),
                disk(1, 960, "nvme", "SIM NVMe 960", false),
            ],
        };
        let nic_count = if shape == 1 { 1 } else { 2 };
        let nics = (0..nic_count)
            .map(|nic| SimNic {
                name: format!("eth{nic}"),
                mac: sim_mac(index, nic),
                driver: "ixgbe".to_string(),
                speed: 10_000,
            })
            .collect();
        SimHardware {
            cpus: [8, 16, 32][shape as usize],
            cpu_model: "Simulated Xeon 4310".to_string(),
            cpu_mhz: 2100,
            memory_kib: [16, 64, 128][shape as usize] * 1024 * 1024,
            firmware: "uefi".to_string(),
            disks,
            nics,
            vendor: "fleet".to_string(),
            product: ["sim-s1", "sim-s2", "sim-s3"][shape as usize].to_string(),
            serial: format!("SIM{index:05}"),
        }
    }

    /// The MAC it netboots from.
    pub fn boot_mac(&self) -> MacAddr {
        self.nics[0].mac
    }

    pub fn macs(&self) -> Vec<MacAddr> {
        self.nics.iter().map(|nic| nic.mac).collect()
    }

    /// Each disk's name, size and serial as commissioning records them: to compare with
    /// [`recorded_disks`] of what the controller recorded.
    pub fn disk_identities(&self) -> Vec<(String, i64, Option<String>)> {
        self.disks
            .iter()
            .map(|disk| {
                (
                    disk.name.clone(),
                    disk.size_bytes,
                    Some(disk.serial.clone()),
                )
            })
            .collect()
    }

    /// What built-in commissioning script `script` prints here, or `None` for a script that is
    /// not one of the fact-finding ones (tests, operator scripts).
    pub fn facts_for(&self, script: &str) -> Option<String> {
        let lines = match script {
            "00-fleet-arch" => vec![fact_line(
                "arch",
                &[
                    ("name", "amd64"),
                    ("machine", "x86_64"),
                    ("firmware", &self.firmware),
                ],
            )],
            "10-fleet-cpu" => vec![fact_line(
                "cpu",
                &[
                    ("count", &self.cpus.to_string()),
                    ("model", &self.cpu_model),
                    ("mhz", &self.cpu_mhz.to_string()),
                    ("sockets", "1"),
                ],
            )],
            "20-fleet-memory" => vec![fact_line(
                "memory",
                &[
                    ("kib", &(self.memory_kib - 200 * 1024).to_string()),
                    ("installed_kib", &self.memory_kib.to_string()),
                ],
            )],
            "30-fleet-disks" => self.disks.iter().map(disk_line).collect(),
            "40-fleet-interfaces" => self.nics.iter().map(nic_line).collect(),
            "50-fleet-pci" => self.pci_lines(),
            "51-fleet-usb" => Vec::new(),
            "60-fleet-dmi" => vec![fact_line(
                "dmi",
                &[
                    ("vendor", &self.vendor),
                    ("product", &self.product),
                    ("serial", &self.serial),
                    ("uuid", ""),
                ],
            )],
            _ => return None,
        };
        Some(lines.iter().map(|line| format!("{line}\n")).collect())
    }

    fn pci_lines(&self) -> Vec<String> {
        self.nics
            .iter()
            .enumerate()
            .map(|(slot, nic)| {
                fact_line(
                    "pci",
                    &[
                        ("slot", &format!("0000:0{}:00.0", slot + 1)),
                        ("vendor", "8086"),
                        ("device", "10fb"),
                        ("class", "020000"),
                        ("driver", &nic.driver),
                    ],
                )
            })
            .collect()
    }
}

fn disk_line(disk: &SimDisk) -> String {
    fact_line(
        "disk",
        &[
            ("name", &disk.name),
            ("size", &disk.size_bytes.to_string()),
            ("bus", &disk.bus),
            ("model", &disk.model),
            ("serial", &disk.serial),
            ("id_path", &disk.id_path()),
            ("rotational", if disk.rotational { "1" } else { "0" }),
            ("block_size", "512"),
        ],
    )
}

fn nic_line(nic: &SimNic) -> String {
    fact_line(
        "interface",
        &[
            ("name", &nic.name),
            ("mac", &nic.mac.to_string()),
            ("link", "up"),
            ("speed", &nic.speed.to_string()),
            ("driver", &nic.driver),
        ],
    )
}

/// One fact line, quoting values as the scripts do (empty, or holding a space, `"` or `\`).
pub fn fact_line(kind: &str, pairs: &[(&str, &str)]) -> String {
    let mut line = kind.to_string();
    for (key, value) in pairs {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        if value.is_empty() || value.contains([' ', '"', '\\']) {
            line.push('"');
            line.push_str(&value.replace('\\', "\\\\").replace('"', "\\\""));
            line.push('"');
        } else {
            line.push_str(value);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commissioning::parse_facts;

    /// The controller's own parser reads back exactly the simulated hardware.
    #[test]
    fn the_fact_parser_reads_back_the_simulated_hardware() {
        for index in 0..3 {
            let hardware = SimHardware::for_index(index);
            let text: String = [
                "00-fleet-arch",
                "10-fleet-cpu",
                "20-fleet-memory",
                "30-fleet-disks",
                "40-fleet-interfaces",
                "50-fleet-pci",
                "60-fleet-dmi",
            ]
            .iter()
            .filter_map(|script| hardware.facts_for(script))
            .collect();
            let mut inventory = crate::commissioning::Inventory::default();
            let problems = parse_facts("all", &text, &mut inventory);
            assert!(problems.is_empty(), "{problems:?}");
            assert_eq!(inventory.hardware.cpus, Some(i64::from(hardware.cpus)));
            assert_eq!(
                inventory.hardware.memory_mib,
                Some(hardware.memory_kib / 1024)
            );
            assert_eq!(recorded_disks(&inventory.disks), hardware.disk_identities());
        }
    }

    #[test]
    fn values_with_spaces_and_quotes_are_quoted() {
        assert_eq!(
            fact_line("cpu", &[("count", "4"), ("model", "a \"b\""), ("x", "")]),
            r#"cpu count=4 model="a \"b\"" x="""#
        );
    }
}
