//! The tests that boot real QEMU virtual machines (TCG, no KVM here): netbooting, enlistment,
//! commissioning, the BMC, erase, rescue and deployment end to end, and the `qemu` power driver.
//! They share two cores with everything else, so `.ci/test` runs them apart from the rest, one
//! at a time (`cargo test --test it vm::`), and the rest without them (`--skip vm::`): a thread
//! waiting for the VM lock then never holds up tests that need no VM. Under a plain
//! `cargo test` they still take `ONE_VM_AT_A_TIME` so that two never boot at once.

mod deploy;
mod enlist;
mod enlist_bmc;
mod erase;
mod netboot;
mod power_qemu;
mod rescue;
