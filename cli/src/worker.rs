//! `rewind worker`: a stateless worker of the distributed mode (see rewind_worker::daemon).

use std::process::ExitCode;
use std::time::Duration;

use rewind_worker::daemon::{DaemonConfig, run_daemon};

pub fn main(argv: Vec<std::ffi::OsString>) -> ExitCode {
    let args: rewind_cli::args::WorkerArgs = rewind_cli::config::parse_from("worker", argv);
    let _telemetry = rewind_cli::init_logging("info", "rewind-worker");
    let endpoints = match args.etcd.endpoints() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if args.slots == Some(0) || args.lease_ttl < 2 {
        eprintln!(
            "error: invalid --slots or --lease-ttl: --slots must be at least 1, --lease-ttl at least 2"
        );
        return ExitCode::from(2);
    }
    let slots = args.slots.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let id = args
        .id
        .unwrap_or_else(|| rewind_cli::args::default_id("worker"));
    let etcd = args.etcd.clone();
    rewind_cli::run_service(slots + 4, &etcd, &endpoints, |store| async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            rewind_cli::shutdown_signal().await;
            let _ = tx.send(true);
        });
        let metrics = rewind_worker::metrics::WorkerMetrics::default();
        if let Some(addr) = args.metrics_listen {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let ready = rewind_cli::etcd_ready(store.clone());
            let refresh = rewind_cli::etcd_metrics(&mut registry);
            tokio::spawn(async move {
                if let Err(e) = rewind_cli::serve_ops(addr, registry, refresh, ready, None).await {
                    tracing::error!(error = %e, listen = %addr, "metrics endpoint failed");
                }
            });
        }
        let cfg = DaemonConfig {
            id,
            slots,
            lease_ttl: Duration::from_secs(args.lease_ttl),
            poll: Duration::from_millis(args.poll_ms.max(10)),
            grace: Duration::from_secs(args.grace),
            metrics,
            attempt_ended: None,
        };
        match run_daemon(store, cfg, rx).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    })
}
