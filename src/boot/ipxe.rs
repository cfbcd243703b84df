//! iPXE boot scripts: what a netbooting machine does, decided from its status alone, rendered as
//! text. Pure: no IO, no clock; `src/boot/http.rs` gathers the inputs and serves the result.

use crate::model::{MacAddr, Status};

/// Why a machine boots the ephemeral environment (the `fleet.role=` it gets): the one role the
/// machine API knows too.
pub use crate::model::Role;

/// What a machine in some status does when it netboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootAction {
    Ephemeral(Role),
    LocalDisk,
    PowerOff,
}

/// The rule book. `None`: the MAC belongs to no machine.
///
/// - Statuses with work to do in the ephemeral environment boot it with their role.
/// - Machines at rest with an OS (or none yet, but nothing to do) boot from the local disk:
///   ready, allocated, deployed, broken (so a person can look at it), reserved, and exiting
///   rescue (back to the deployed OS).
/// - New machines wait for a person, failed ones are kept for inspection, missing and retired
///   ones should not be running: these are powered off.
pub fn boot_action(status: Option<Status>) -> BootAction {
    use Status::*;
    let Some(status) = status else {
        return BootAction::Ephemeral(Role::Enlist);
    };
    match Role::booted_for(status) {
        Role::None => match status {
            Ready | Allocated | Deployed | Broken | Reserved | ExitingRescueMode => {
                BootAction::LocalDisk
            }
            _ => BootAction::PowerOff,
        },
        role => BootAction::Ephemeral(role),
    }
}

/// [`boot_action`] for a known machine, `installed` when its deployment's installer signalled
/// done: from then netboot is off for it, and it boots the system just installed from its disk
/// (while the controller waits for the call-back, and once deployed).
pub fn boot_action_installed(status: Status, installed: bool) -> BootAction {
    if installed && status == Status::Deploying {
        return BootAction::LocalDisk;
    }
    boot_action(Some(status))
}

/// Everything an ephemeral boot script needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EphemeralBoot<'a> {
    pub role: Role,
    pub mac: MacAddr,
    /// The machine's name, when it is known.
    pub machine: Option<&'a str>,
    /// The one-shot boot secret the machine trades for its run's token (never for enlistment:
    /// an unknown machine has no record to get a secret for).
    pub boot_secret: Option<&'a str>,
    /// How the machine reaches the controller, e.g. `http://10.0.0.1:5240` (no trailing `/`).
    pub base_url: &'a str,
    /// The image whose kernel and initrd are booted.
    pub image: &'a str,
    /// The machine's `ephemeral_kernel_params` (a serial console...), after the controller's
    /// own so that they win where the kernel takes the last of a repeated parameter. Empty for
    /// none. The fleet file refuses control characters and the controller's own parameters.
    pub extra_kernel_params: &'a str,
}

/// The file name iPXE gives the initrd (the last segment of its URL). The kernel command line
/// must carry `initrd=<that name>`: under UEFI this iPXE hands the kernel the initrd only by name.
pub const INITRD_NAME: &str = "initrd";

/// The URL of one file of an image, with the machine's MAC so the transfer is recorded on it.
/// The MAC is a path segment, not a query: iPXE names an image after its URL's last segment,
/// and that name must stay `initrd` (see [`INITRD_NAME`]).
pub fn image_file_url(base_url: &str, image: &str, file: &str, mac: MacAddr) -> String {
    format!(
        "{base_url}/boot/by-mac/{}/{image}/{file}",
        mac.to_string().replace(':', "-")
    )
}

/// The kernel command line of the ephemeral environment.
pub fn kernel_command_line(boot: &EphemeralBoot<'_>) -> String {
    let mut words = vec![
        format!("initrd={INITRD_NAME}"),
        // A kernel that cannot go on must stop the machine, never hang it (QEMU runs -no-reboot).
        "panic=-1".to_string(),
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
        format!("fleet.url={}", boot.base_url),
        format!("fleet.role={}", boot.role.as_str()),
        format!("fleet.mac={}", boot.mac),
        // The pxelinux convention, which many initramfs tools read to pick the boot interface.
        format!("BOOTIF=01-{}", boot.mac.to_string().replace(':', "-")),
    ];
    if let Some(machine) = boot.machine {
        words.push(format!("fleet.machine={machine}"));
    }
    if let Some(secret) = boot.boot_secret {
        words.push(format!("fleet.boot={secret}"));
    }
    let extra = boot.extra_kernel_params.trim();
    if !extra.is_empty() {
        words.push(extra.to_string());
    }
    words.join(" ")
}

/// Boots the image's kernel and initrd over HTTP.
pub fn render_ephemeral(boot: &EphemeralBoot<'_>) -> String {
    let kernel = image_file_url(boot.base_url, boot.image, "kernel", boot.mac);
    let initrd = image_file_url(boot.base_url, boot.image, INITRD_NAME, boot.mac);
    let who = boot.machine.unwrap_or("an unknown machine");
    format!(
        "#!ipxe\n\
         echo fleet: {role} for {who} ({mac}), image {image}\n\
         kernel {kernel} {command_line} || goto failed\n\
         initrd {initrd} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo fleet: the ephemeral environment did not boot, retrying in 10 seconds\n\
         sleep 10\n\
         reboot\n",
        role = boot.role.as_str(),
        mac = boot.mac,
        image = boot.image,
        command_line = kernel_command_line(boot),
    )
}

/// Boots the first local disk. BIOS: `sanboot --drive 0x80`, else `exit` back to the BIOS's next
/// boot device. UEFI: iPXE cannot boot a local disk itself, so it hands back to the firmware's
/// next boot entry (the disk, which fleet-deploy put right after the network) by exiting with an
/// error: a UEFI boot manager that gets EFI_SUCCESS back from a boot option stops going through
/// BootOrder and shows its boot menu (UEFI spec 3.1.1; edk2's BdsDxe runs its setup application,
/// OVMF's UiApp), and iPXE's `exit` without a status returns EFI_SUCCESS.
pub fn render_local_disk(machine: &str, status: Status) -> String {
    format!(
        "#!ipxe\n\
         echo fleet: {machine} is {status}: booting from the local disk\n\
         iseq ${{platform}} efi && goto efi ||\n\
         sanboot --no-describe --drive 0x80 || exit\n\
         :efi\n\
         echo fleet: exiting with an error, so that the firmware boots its next boot entry\n\
         exit 1\n",
        status = status.as_str(),
    )
}

/// Powers the machine off (or, where iPXE cannot, leaves the network boot).
pub fn render_power_off(machine: &str, status: Status) -> String {
    format!(
        "#!ipxe\n\
         echo fleet: {machine} is {status}: nothing to boot, powering off\n\
         poweroff || exit\n",
        status = status.as_str(),
    )
}

/// When the controller has no ephemeral image to give: say so on the console, try again later.
pub fn render_unavailable(reason: &str) -> String {
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "#!ipxe\n\
         echo fleet: cannot boot: {reason}\n\
         sleep 60\n\
         reboot\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    fn boot(
        role: Role,
        machine: Option<&'static str>,
        boot_secret: Option<&'static str>,
    ) -> EphemeralBoot<'static> {
        EphemeralBoot {
            role,
            mac: MAC,
            machine,
            boot_secret,
            base_url: "http://10.99.0.1:5240",
            image: "ephemeral",
            extra_kernel_params: "",
        }
    }

    #[test]
    fn every_status_has_a_boot_action() {
        let table: Vec<String> = Status::ALL
            .iter()
            .map(|status| format!("{:<30} {:?}", status.as_str(), boot_action(Some(*status))))
            .chain(std::iter::once(format!(
                "{:<30} {:?}",
                "(unknown MAC)",
                boot_action(None)
            )))
            .collect();
        insta::assert_snapshot!(table.join("\n"));
    }

    #[test]
    fn enlistment_script() {
        insta::assert_snapshot!(render_ephemeral(&boot(Role::Enlist, None, None)));
    }

    #[test]
    fn commissioning_script_carries_role_and_boot_secret() {
        let script = render_ephemeral(&boot(Role::Commissioning, Some("node-1"), Some("s3cr3t")));
        insta::assert_snapshot!(script);
    }

    /// A machine's `ephemeral_kernel_params` end the kernel line, after the controller's own.
    #[test]
    fn the_machine_s_ephemeral_kernel_params_end_the_kernel_line() {
        let mut boot = boot(Role::Commissioning, Some("node-1"), Some("s3cr3t"));
        boot.extra_kernel_params = "console=ttyS1,9600 nomodeset";
        let line = kernel_command_line(&boot);
        assert!(
            line.ends_with("fleet.boot=s3cr3t console=ttyS1,9600 nomodeset"),
            "{line}"
        );
        let script = render_ephemeral(&boot);
        assert!(script.contains("fleet.boot=s3cr3t console=ttyS1,9600 nomodeset || goto failed"));
    }

    #[test]
    fn local_disk_and_power_off_scripts() {
        insta::assert_snapshot!(render_local_disk("node-1", Status::Deployed));
        insta::assert_snapshot!(render_power_off("node-1", Status::New));
        insta::assert_snapshot!(render_unavailable("no ephemeral image\nis configured"));
    }
}
