//! The `thalamus` binary: all logic lives in the library.

/// jemalloc, not glibc's malloc: a long-running controller's RSS stays flat under steady
/// input (glibc's per-thread arenas kept fragmented pages; see the README's soak).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    thalamus::cli::main()
}
