//! The `ccflow` binary: logging setup, then the CLI; the exit code comes
//! from one mapping in `ccflow::error`.

fn main() {
    ccflow::STARTED.get_or_init(std::time::Instant::now);
    tune_malloc();
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

/// Keeps freed memory for reuse instead of handing it back to the kernel:
/// every page the process touches for the first time costs a page fault
/// (2.2 µs each in the CI virtual machines, where a rerun after a one-file
/// edit faulted ~2,700 pages). One arena for every thread (the threads
/// beside the run loop allocate little, and each arena of its own is
/// fresh memory); large buffers (records, the memo) from the heap rather
/// than from a mapping of their own unmapped when freed; no trimming.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
