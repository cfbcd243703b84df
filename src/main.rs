//! The `fleet` command. Everything but argument handling and printing lives in the library.

mod cli;

/// mimalloc: large plans allocate and free millions of small records, and glibc's allocator
/// spent about a third of `fleet plan`'s time on them at 100,000 machines. Transparent huge
/// pages are left on (the system's `madvise` policy, which mimalloc asks for): `fleet plan` of
/// 100,000 machines then takes ~19,000 page faults instead of ~190,000 and a fifth less time
/// (ARCHITECTURE, the planner). They were off (`no_thp`) until 2026-12-05: measured then with
/// the 10 ms purge delay, zeroing 2 MiB pages had cost more than it saved.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    purge_freed_memory_sooner();
    cli::main()
}

/// mimalloc hands memory a thread freed back to the system 10 ms later by default. `fleet plan`
/// frees the parsed TOML and the declarations while its threads plan; with 1 ms the pages are
/// reused or returned before the next phase touches new ones, and the peak of 100,000 machines
/// is ~390 MiB instead of 480–506 MiB, for ~0.05 s more wall time (ARCHITECTURE, the planner).
/// Set first thing in `main`, for every command: set after the first allocations (after the
/// arguments are parsed) it did not take, and the arguments cannot be read without allocating.
fn purge_freed_memory_sooner() {
    // mimalloc.h (v2 and v3 alike): `mi_option_purge_delay` comes right before
    // `mi_option_use_numa_nodes` (15 and 16); the -sys crate names no constant for it.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = libmimalloc_sys::mi_option_use_numa_nodes - 1;
    // SAFETY: sets one integer option of the allocator, which reads it at each purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 1) }
}
