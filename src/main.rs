//! The `fleet` command. Everything but argument handling and printing lives in the library.

mod cli;

/// mimalloc: large plans allocate and free millions of small records, and glibc's allocator
/// spent about a third of `fleet plan`'s time on them at 100,000 machines. Built without
/// transparent huge pages (`no_thp`): zeroing 2 MiB pages on first touch took more system time
/// than the allocator saved, and raised the peak memory.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
