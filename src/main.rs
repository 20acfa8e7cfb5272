//! The `thalamus` binary: all logic lives in the library.

fn main() -> std::process::ExitCode {
    thalamus::cli::main()
}
