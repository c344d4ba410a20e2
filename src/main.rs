//! The `berth` binary. Everything is in the library; see its crate docs for
//! the contract, the exit codes and the layout.

fn main() -> std::process::ExitCode {
    berth::cli::main()
}
