//! The `ccflow` binary: logging setup, then the CLI; the exit code comes
//! from one mapping in `ccflow::error`.

fn main() {
    ccflow::STARTED.get_or_init(std::time::Instant::now);
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
