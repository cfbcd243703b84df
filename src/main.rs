//! The `fleet` command. Everything but argument handling and printing lives in the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
