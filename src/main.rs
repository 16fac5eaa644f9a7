//! The `ccflow` binary: logging setup, then the CLI; the exit code comes
//! from one mapping in `ccflow::error`.

/// mimalloc rather than glibc's malloc: a run allocates and frees many
/// small strings and paths per instance (plan, settle, record, memo); a
/// rerun after a one-file edit of 1,000 instances took 25.5 ms with glibc
/// and 23.9 ms with mimalloc (interleaved medians of 30).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    ccflow::STARTED.get_or_init(std::time::Instant::now);
    // Freed memory is never handed back to the OS: a run is a short-lived
    // process, and memory returned 10 ms after it was freed (the default)
    // had to be faulted in and zeroed again when the next phase allocated
    // (a change run over 1,000 instances: 24.2 -> 23.5 ms, interleaved
    // medians of 30). `MIMALLOC_PURGE_DELAY` still overrides it.
    // SAFETY: sets an option's default value; no memory is involved.
    unsafe { libmimalloc_sys::mi_option_set_default(MI_OPTION_PURGE_DELAY, -1) };
    // Warnings from the library (cache or index trouble, cleanup failures)
    // go to stderr; `CCFLOW_LOG=debug` shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CCFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .with_target(false)
        .without_time()
        .init();
    std::process::exit(ccflow::cli::main());
}

/// stderr for log lines, whose write errors are dropped: with the reader
/// gone (`ccflow run ... 2>&1 | head`), tracing-subscriber reports a failed
/// write with `eprintln!`, which panics on the same closed stderr.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
