//! Pieces shared by the `rewind`, `rewind-coordinator` and `rewind-worker` binaries.

use std::io::IsTerminal;

/// Logs to stderr: JSON lines when stderr is not a terminal (services, CI), text otherwise.
/// The filter comes from `REWIND_LOG` (default `default_level`).
pub fn init_logging(default_level: &str) {
    let json = !std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `--etcd http://a:2379,http://b:2379` as a list; an empty list is an error naming the flag.
pub fn etcd_endpoints(value: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.contains("://") {
                s.to_string()
            } else {
                format!("http://{s}")
            }
        })
        .collect();
    if list.is_empty() {
        return Err(
            "invalid --etcd: give at least one endpoint, e.g. http://127.0.0.1:2379".into(),
        );
    }
    Ok(list)
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
