//! `ccflow mock-api --script FILE --port N`: serve a script until SIGINT or
//! SIGTERM, for users rehearsing a workflow offline and for tests in other
//! processes (which read `GET /__ccflow/stats`).

use std::path::Path;

use super::script::load_script;
use super::server::MockServer;

/// Loads `script`, serves it on 127.0.0.1:`port` (0 picks one) and blocks
/// until SIGINT or SIGTERM. Prints `listening on http://127.0.0.1:PORT` to
/// stderr once ready. Returns the process exit code: 0 after a signal, 2 for
/// an invalid script, 1 when the server cannot start.
///
/// Safe to call from inside a tokio runtime: the server runs on a runtime of
/// its own, in a thread of its own.
pub fn run_cli(script: &Path, port: u16) -> i32 {
    let script = match load_script(script) {
        Ok(script) => script,
        Err(error) => {
            crate::errln!("error: {}", error_chain(&error));
            return 2;
        }
    };
    let thread = std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                crate::errln!("error: failed to start the tokio runtime: {error}");
                return 1;
            }
        };
        runtime.block_on(serve(script, port))
    });
    thread.join().unwrap_or(1)
}

async fn serve(script: super::script::Script, port: u16) -> i32 {
    use tokio::signal::unix::{signal, SignalKind};
    let server = match MockServer::start(script, port).await {
        Ok(server) => server,
        Err(error) => {
            crate::errln!("error: {}", error_chain(&error));
            return 1;
        }
    };
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(error), _) | (_, Err(error)) => {
            crate::errln!("error: failed to install signal handlers: {error}");
            return 1;
        }
    };
    crate::errln!("listening on {}", server.base_url());
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    let stats = server.stats();
    crate::errln!(
        "mock-api: {} requests, {} model requests; shutting down",
        stats.requests,
        stats.model_requests
    );
    server.shutdown().await;
    0
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}
