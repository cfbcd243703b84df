//! Faults a simulated machine can be given: on request per machine, or spread over a share of
//! the fleet. Pure: which machines get a fleet-wide fault is a function of their index.

use std::time::Duration;

/// What goes wrong with one machine. The default: nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// This script (a test, an operator's script or a built-in one) fails with exit 3.
    pub failing_script: Option<String>,
    /// After its run starts (instructions fetched) the machine says nothing more: no result, no
    /// heartbeat, no signal, as if it hung.
    pub silent: bool,
    /// The BMC answers every power call with 500.
    pub bmc_refuses: bool,
    /// The BMC accepts the connection and never answers.
    pub bmc_hangs: bool,
    /// Each disk script (the disk test, the deploy write, an erase) takes this much longer.
    pub slow_disk: Option<Duration>,
    /// This many DHCP replies are lost (the client retransmits, as PXE ROMs do).
    pub lost_dhcp_replies: u32,
}

/// Why a fault could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fault `{0}`: expected fail-script=NAME, silent, bmc-refuses, bmc-hangs, slow-disk=SECONDS or lost-dhcp=COUNT")]
pub struct FaultError(pub String);

impl Faults {
    /// Adds one fault written as on the command line: `fail-script=NAME`, `silent`,
    /// `bmc-refuses`, `bmc-hangs`, `slow-disk=SECONDS`, `lost-dhcp=COUNT`.
    pub fn add(&mut self, written: &str) -> Result<(), FaultError> {
        let error = || FaultError(written.to_string());
        let (name, value) = match written.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (written, None),
        };
        match (name, value) {
            ("fail-script", Some(script)) if !script.is_empty() => {
                self.failing_script = Some(script.to_string())
            }
            ("silent", None) => self.silent = true,
            ("bmc-refuses", None) => self.bmc_refuses = true,
            ("bmc-hangs", None) => self.bmc_hangs = true,
            ("slow-disk", Some(seconds)) => {
                let seconds: u64 = seconds.parse().map_err(|_| error())?;
                self.slow_disk = Some(Duration::from_secs(seconds));
            }
            ("lost-dhcp", Some(count)) => {
                self.lost_dhcp_replies = count.parse().map_err(|_| error())?
            }
            _ => return Err(error()),
        }
        Ok(())
    }

    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }

    /// One line for a person: `fail-script=fleet-memtest, silent`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(script) = &self.failing_script {
            parts.push(format!("fail-script={script}"));
        }
        if self.silent {
            parts.push("silent".to_string());
        }
        if self.bmc_refuses {
            parts.push("bmc-refuses".to_string());
        }
        if self.bmc_hangs {
            parts.push("bmc-hangs".to_string());
        }
        if let Some(slow) = self.slow_disk {
            parts.push(format!("slow-disk={}", slow.as_secs()));
        }
        if self.lost_dhcp_replies > 0 {
            parts.push(format!("lost-dhcp={}", self.lost_dhcp_replies));
        }
        if parts.is_empty() {
            "none".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Spreads `fault` over `percent` % of `count` machines, evenly (every k-th machine, starting
/// with the last, so that a small fleet's first machines stay healthy): the indices that get it.
pub fn share_of_fleet(count: u32, percent: u32) -> Vec<u32> {
    let chosen = (u64::from(count) * u64::from(percent.min(100))).div_ceil(100) as u32;
    if chosen == 0 {
        return Vec::new();
    }
    let step = f64::from(count) / f64::from(chosen);
    (0..chosen)
        .map(|k| count - 1 - (f64::from(k) * step) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_as_written_and_described_back() {
        let mut faults = Faults::default();
        for written in [
            "fail-script=fleet-memtest",
            "silent",
            "slow-disk=3",
            "lost-dhcp=2",
        ] {
            faults.add(written).unwrap();
        }
        assert_eq!(
            faults.describe(),
            "fail-script=fleet-memtest, silent, slow-disk=3, lost-dhcp=2"
        );
        assert!(faults.add("slow-disk=x").is_err());
        assert!(faults.add("melt").is_err());
    }

    #[test]
    fn a_share_of_the_fleet_is_spread_and_counted_up() {
        assert_eq!(share_of_fleet(200, 10).len(), 20);
        assert_eq!(share_of_fleet(20, 10), vec![19, 9]);
        assert_eq!(share_of_fleet(3, 10), vec![2]);
        assert!(share_of_fleet(10, 0).is_empty());
        let mut all = share_of_fleet(200, 10);
        all.dedup();
        assert_eq!(all.len(), 20);
    }
}
