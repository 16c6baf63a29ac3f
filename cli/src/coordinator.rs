//! `rewind coordinator`: serves rewind.v1.JobService and, while it leads, drives jobs.

use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use rewind_common::lifecycle::Limits;
use rewind_coordinator::core::{Coordinator, Retention};
use rewind_coordinator::driver::{LeaderConfig, lead};
use rewind_coordinator::service::JobServiceImpl;
use rewind_proto::v1::job_service_server::JobServiceServer;
use rewind_worker::kafka::KafkaChecks;

pub fn main(argv: Vec<std::ffi::OsString>) -> ExitCode {
    let args: rewind_cli::args::CoordinatorArgs =
        rewind_cli::config::parse_from("coordinator", argv);
    let _telemetry = rewind_cli::init_logging("info", "rewind-coordinator");
    let endpoints = match args.etcd.endpoints() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ceiling = rewind_common::request::MAX_EVENT_BYTES_CEILING;
    if !(64..=ceiling).contains(&args.max_event_bytes) || args.max_range_hours == 0 {
        eprintln!(
            "error: invalid --max-event-bytes or --max-range-hours: events between 64 and {ceiling} bytes, ranges of at least one hour"
        );
        return ExitCode::from(2);
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            match rewind_cli::server_tls(cert, key, args.tls_client_ca.as_deref()) {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        _ => None,
    };
    let one = args
        .auth_token_file
        .as_deref()
        .map(rewind_cli::RequireToken::from_file)
        .transpose();
    let scoped = args
        .tokens_file
        .as_deref()
        .map(rewind_cli::RequireToken::from_tokens_file)
        .transpose();
    let auth = match (one, scoped) {
        (Ok(a), Ok(b)) => match (a, b) {
            (Some(a), Some(b)) => Some(a.merge(b)),
            (a, b) => a.or(b),
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let tenant_caps = match rewind_common::lifecycle::TenantCaps::parse(&args.tenant_max_shards) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let per_tenant =
        |flag: &str, values: &[String]| rewind_common::lifecycle::PerTenant::parse(flag, values);
    let tenant_budgets = match (
        per_tenant(
            "--tenant-replay-events-per-sec",
            &args.tenant_replay_events_per_sec,
        ),
        per_tenant(
            "--tenant-replay-bytes-per-sec",
            &args.tenant_replay_bytes_per_sec,
        ),
        per_tenant(
            "--tenant-source-requests-per-sec",
            &args.tenant_source_requests_per_sec,
        ),
    ) {
        (Ok(replay_events_per_sec), Ok(replay_bytes_per_sec), Ok(source_requests_per_sec)) => {
            rewind_common::lifecycle::TenantBudgets {
                replay_events_per_sec,
                replay_bytes_per_sec,
                source_requests_per_sec,
            }
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let id = args
        .id
        .clone()
        .unwrap_or_else(|| rewind_cli::args::default_id("coordinator"));
    let etcd = args.etcd.clone();
    rewind_cli::run_service(512, &etcd, &endpoints, |store| async move {
        let metrics = rewind_coordinator::metrics::CoordinatorMetrics::default();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let core = Coordinator::new(
            store.clone(),
            Arc::new(crate::replay::ServiceChecks(KafkaChecks)),
        )
        .with_limits(Limits {
            max_range_hours: args.max_range_hours,
            max_event_bytes: args.max_event_bytes,
        })
        .with_tenant_caps(tenant_caps)
        .with_tenant_budgets(tenant_budgets)
        .with_retention(Retention {
            keep_jobs: args.keep_finished_jobs,
            keep_for: Duration::from_secs(args.keep_finished_days.saturating_mul(24 * 3600)),
        });
        if let Some(addr) = args.metrics_listen {
            let mut registry = prometheus_client::registry::Registry::default();
            metrics.register(&mut registry);
            let ready = rewind_cli::etcd_ready(store.clone());
            let etcd = rewind_cli::etcd_metrics(&mut registry);
            let refresh: rewind_cli::Hook<()> = {
                let (store, metrics) = (store.clone(), metrics.clone());
                std::sync::Arc::new(move || {
                    let (store, metrics, etcd) = (store.clone(), metrics.clone(), etcd.clone());
                    Box::pin(async move {
                        metrics.refresh(&store).await;
                        etcd().await;
                    })
                })
            };
            // The JSON API under /api/v1/ (the same auth as gRPC) is served there too.
            let api = crate::api::router(JobServiceImpl::new(core.clone()), auth.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    rewind_cli::serve_ops(addr, registry, refresh, ready, Some(api)).await
                {
                    tracing::error!(error = %e, listen = %addr, "metrics endpoint failed");
                }
            });
        }
        // Guarded replays are run day by day by the leader.
        let guards = tokio::spawn(crate::replay::drive_guards(
            core.clone(),
            id.clone(),
            rx.clone(),
        ));
        let leader = tokio::spawn(lead(
            core.clone(),
            LeaderConfig {
                id: id.clone(),
                lease_ttl: Duration::from_secs(args.lease_ttl.max(2)),
                tick: Duration::from_millis(300),
                compact_every: (args.etcd_compact_every > 0)
                    .then(|| Duration::from_secs(args.etcd_compact_every)),
                compact_keep: args.etcd_compact_keep,
                metrics,
            },
            rx.clone(),
        ));
        // gRPC health follows real readiness: SERVING while etcd answers (leader or standby),
        // NOT_SERVING while it does not. Checked every 2 s.
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<JobServiceServer<JobServiceImpl<rewind_etcd::EtcdStore>>>()
            .await;
        {
            let ready = rewind_cli::etcd_ready(store.clone());
            let health = health.clone();
            tokio::spawn(async move {
                let mut serving = true;
                loop {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let ok = ready().await.is_ok();
                    if ok != serving {
                        serving = ok;
                        if ok {
                            health
                                .set_serving::<JobServiceServer<JobServiceImpl<rewind_etcd::EtcdStore>>>()
                                .await;
                        } else {
                            tracing::warn!("etcd unreachable: reporting NOT_SERVING");
                            health
                                .set_not_serving::<JobServiceServer<JobServiceImpl<rewind_etcd::EtcdStore>>>()
                                .await;
                        }
                        // The server as a whole ("", what Kubernetes' gRPC probes ask) too.
                        use tonic_health::ServingStatus as S;
                        let status = if ok { S::Serving } else { S::NotServing };
                        health.set_service_status("", status).await;
                    }
                }
            });
        }
        let reflection = match tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(rewind_proto::v1::FILE_DESCRIPTOR_SET)
            .build_v1()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: reflection service: {e}");
                return ExitCode::from(1);
            }
        };
        tracing::info!(listen = %args.listen, coordinator = %id, "serving rewind.v1.JobService");
        let mut stop = rx.clone();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = match builder.tls_config(tls) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("error: TLS configuration: {e}");
                    return ExitCode::from(2);
                }
            };
        }
        let api = JobServiceImpl::new(core);
        let router = builder.add_service(health_service).add_service(reflection);
        let router = match auth {
            Some(auth) => router.add_service(JobServiceServer::with_interceptor(api, auth)),
            None => router.add_service(JobServiceServer::new(api)),
        };
        let served = router
            .serve_with_shutdown(args.listen, async move {
                tokio::select! {
                    _ = rewind_cli::shutdown_signal() => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            })
            .await;
        let _ = tx.send(true);
        let _ = leader.await;
        let _ = guards.await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: serving on {}: {e}", args.listen);
                ExitCode::from(1)
            }
        }
    })
}
