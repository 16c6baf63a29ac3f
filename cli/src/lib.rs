//! Pieces shared by the CLI and the services (`rewind coordinator`, `rewind worker`) of the one
//! `rewind` binary: configuration (`args`, `config`), telemetry, the operations endpoint
//! (`ops`), the API's security, and how a service starts and stops.

pub mod args;
pub mod config;
mod ops;
mod security;
mod telemetry;

pub use ops::{Hook, etcd_metrics, etcd_ready, serve_ops};
pub use security::{RequireToken, constant_time_eq, init_crypto, server_tls};
pub use telemetry::{Telemetry, init_logging};

/// The runtime of a service: two async threads (the work is on the blocking pool or in etcd)
/// and at most `max_blocking` blocking threads.
pub fn service_runtime(max_blocking: usize) -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(max_blocking)
        .enable_all()
        .build()
}

/// Runs a service: its runtime, then etcd (retried until it answers), then `body`. Failing to
/// start the runtime or to reach etcd for good is exit code 1, said on stderr.
pub fn run_service<F, Fut>(
    max_blocking: usize,
    etcd: &args::EtcdArgs,
    endpoints: &[String],
    body: F,
) -> std::process::ExitCode
where
    F: FnOnce(rewind_etcd::EtcdStore) -> Fut,
    Fut: std::future::Future<Output = std::process::ExitCode>,
{
    let runtime = match service_runtime(max_blocking) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        match etcd.connect(endpoints).await {
            Ok(store) => body(store).await,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::from(1)
            }
        }
    })
}

/// `--etcd http://a:2379,http://b:2379` as a list; an empty list is an error naming the flag.
/// An instant as `rewind jobs --since/--until` and the job API's `since`/`until` take it:
/// `YYYY-MM-DD`, `YYYY-MM-DDTHH`, `YYYY-MM-DDTHH:MM` (UTC) or RFC 3339; ms since the epoch.
pub fn parse_instant(value: &str) -> Result<i64, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    for format in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, format) {
            return Ok(t.and_utc().timestamp_millis());
        }
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(&format!("{v}:00"), "%Y-%m-%dT%H:%M") {
        return Ok(t.and_utc().timestamp_millis());
    }
    if let Ok(d) = NaiveDate::parse_from_str(v, "%Y-%m-%d") {
        return Ok(d
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis()));
    }
    Err(format!(
        "{value:?} is not a time: YYYY-MM-DD, YYYY-MM-DDTHH, YYYY-MM-DDTHH:MM (UTC) or RFC 3339"
    ))
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn instants_parse_in_every_form_and_bad_ones_say_which() {
        let day = super::parse_instant("2024-04-01").unwrap();
        assert_eq!(day, 1_711_929_600_000);
        assert_eq!(
            super::parse_instant("2024-04-01T02").unwrap(),
            day + 7_200_000
        );
        assert_eq!(
            super::parse_instant("2024-04-01T02:30").unwrap(),
            day + 9_000_000
        );
        assert_eq!(
            super::parse_instant("2024-04-01T02:30:00+02:00").unwrap(),
            day + 1_800_000
        );
        let e = super::parse_instant("yesterday").unwrap_err();
        assert!(e.contains("\"yesterday\""), "{e}");
    }

    use super::*;

    #[test]
    fn etcd_endpoints_need_one() {
        assert_eq!(
            etcd_endpoints("a:1, http://b:2").unwrap(),
            vec!["http://a:1".to_string(), "http://b:2".to_string()]
        );
        assert!(etcd_endpoints(" , ").is_err());
    }
}
