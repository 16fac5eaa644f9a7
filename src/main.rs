//! The `ccflow` binary: logging setup, then the CLI; the exit code comes
//! from one mapping in `ccflow::error`.

fn main() {
    // Warnings from the library (cache or index trouble, cleanup failures)
    // go to stderr; `CCFLOW_LOG=debug` shows more.
    let filter = tracing_subscriber::EnvFilter::try_from_env("CCFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    std::process::exit(ccflow::cli::main());
}
