//! Disk erases on a real virtual machine: QEMU (SeaBIOS, virtio-net, TCG) with an NVMe disk,
//! netbooting the ephemeral environment (which carries nvme-cli), enlisted and commissioned to
//! ready as enlist.rs does it (whose helpers this uses), then:
//! 1. released with a secure erase → ready; the result says which NVMe erase ran: QEMU's NVMe
//!    controller offers Format NVM without crypto erase (FNA 0) and no Sanitize (SANICAP 0),
//!    so the user-data erase (`nvme format --ses=1`), which QEMU carries out by zeroing the
//!    namespace: the pattern the test wrote at both ends of the disk file is gone;
//! 2. released with a quick erase → ready, with the first and the last MiB of the disk file zero.
//!
//! Waits are multiples of the first boot measured here (enlist.rs's `Pace`), so a loaded host
//! gets as many boots' worth of time as a quiet one.

use crate::support::bootnet::{
    read, tail, vm_test_directory, BootNetwork, NamespacedController, ONE_VM_AT_A_TIME,
};
use crate::vm::enlist::{
    cli_ok, enlist_run_ended, read_at, wait_for, write_at, write_fleet_file, Hardware, Pace, Vm,
    DISK_BYTES,
};
use fleet::model::records::ScriptResult;
use fleet::model::Status;
use fleet::store::Store;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

const MAC: &str = "52:54:00:5e:00:03";
const NAME: &str = "enlisted-5254005e0003";
const MIB: u64 = 1 << 20;

fn adopted_machine(qmp: &Path) -> String {
    format!(
        "[[machine]]\nname = \"{NAME}\"\nmacs = [\"{MAC}\"]\nstate = \"ready\"\n\n[machine.power]\ntype = \"qemu\"\nqmp_socket = \"{}\"\n",
        qmp.display()
    )
}

/// Writes a recognisable MiB (no zero byte in it) at both ends of the disk file.
fn mark_both_ends(disk: &Path) -> Vec<u8> {
    let pattern: Vec<u8> = (0..MIB).map(|i| (i % 251 + 1) as u8).collect();
    write_at(disk, 0, &pattern);
    write_at(disk, DISK_BYTES - MIB, &pattern);
    pattern
}

fn assert_both_ends_zero(disk: &Path, erase: &str) {
    let zeros = vec![0; MIB as usize];
    assert!(
        read_at(disk, 0, MIB as usize) == zeros,
        "{erase} erase: the first MiB is not zero"
    );
    assert!(
        read_at(disk, DISK_BYTES - MIB, MIB as usize) == zeros,
        "{erase} erase: the last MiB is not zero"
    );
}

/// The results of the built-in script `name` so far.
async fn results_of(store: &Store, id: i64, name: &str) -> Vec<ScriptResult> {
    let results = store.script_results(id).await.unwrap();
    results.into_iter().filter(|r| r.name == name).collect()
}

/// Allocates the machine and releases it with `erase`; waits until it rests again (or failed);
/// the erase's result.
async fn release_with_erase(
    erase: &str,
    pace: &Pace,
    vm: &mut Vm,
    controller: &NamespacedController,
    store: &Store,
    id: i64,
) -> ScriptResult {
    let script = format!("fleet-erase-{erase}");
    let before = results_of(store, id, &script).await.len();
    cli_ok(controller, &["machine", "allocate", NAME]);
    cli_ok(controller, &["machine", "release", NAME, "--erase", erase]);
    let (status, reason) = wait_for(
        &format!("released with a {erase} erase"),
        pace.boots(4),
        vm,
        controller,
        async || {
            let record = store.machine(NAME).await.ok()??;
            let status = record.lifecycle.status;
            (!status.is_in_progress() && status != Status::Allocated)
                .then_some((status, record.status_reason))
        },
    )
    .await;
    let results = results_of(store, id, &script).await;
    assert_eq!(
        status,
        Status::Ready,
        "{reason:?}\n{results:#?}\ncontroller:\n{}",
        tail(&read(&controller.log), 40)
    );
    assert_eq!(results.len(), before + 1, "{results:#?}");
    let result = results.into_iter().last().unwrap();
    assert_eq!(
        result.status, "passed",
        "{}{}",
        result.stdout, result.stderr
    );
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nvme_machine_is_erased_securely_then_quickly_and_is_ready_each_time() {
    let _one = ONE_VM_AT_A_TIME.lock().await;
    // FLEET_NETBOOT_KEEP=1 keeps the files for a look afterwards.
    let directory = vm_test_directory();
    let dir = directory.path();
    let network = BootNetwork::new();
    let controller = NamespacedController::start(&network, dir, &write_fleet_file(dir, "", ""));
    let store = controller.store().await;
    let mut vm = Vm::start_with(&network, dir, MAC, Hardware::BiosVirtioNvme);

    // Enlisted (the first boot sets the pace), adopted, commissioned to ready by apply.
    let started = Instant::now();
    let record = wait_for(
        "enlisted",
        Pace::FIRST_BOOT_LIMIT,
        &mut vm,
        &controller,
        async || enlist_run_ended(&store, NAME).await,
    )
    .await;
    let pace = Pace {
        first_boot: started.elapsed(),
    };
    assert_eq!(record.disks[0].name, "nvme0n1", "{:?}", record.disks);
    let fleet_file = write_fleet_file(dir, "", &adopted_machine(&vm.qmp));
    let output = controller.cli(&["apply", "-f", fleet_file.to_str().unwrap(), "--yes"]);
    assert!(
        output.status.success(),
        "apply failed:\n{}\n{}\ncontroller:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        tail(&read(&controller.log), 40)
    );
    let id = store.machine(NAME).await.unwrap().unwrap().id;
    let disk = dir.join("disk.img");

    // 1. Secure: the NVMe user-data erase, checked by the script's own pattern; ours is gone too.
    mark_both_ends(&disk);
    let result = release_with_erase("secure", &pace, &mut vm, &controller, &store, id).await;
    assert_eq!(
        result.results,
        json!({"mode": "secure", "disks": [{
            "name": "nvme0n1", "erased": true,
            "how": "NVMe user-data erase (nvme format --ses=1)", "fell_back": null
        }]}),
        "{}",
        result.stdout
    );
    assert_both_ends_zero(&disk, "secure");

    // 2. Quick: signatures wiped, the first and the last MiB (4 at each end) zeroed.
    mark_both_ends(&disk);
    let result = release_with_erase("quick", &pace, &mut vm, &controller, &store, id).await;
    let entry = &result.results["disks"][0];
    assert_eq!(entry["name"], "nvme0n1", "{}", result.results);
    assert!(
        entry["how"]
            .as_str()
            .is_some_and(|how| how.starts_with("signatures wiped, ends zeroed")),
        "{}",
        result.results
    );
    assert_both_ends_zero(&disk, "quick");
}
