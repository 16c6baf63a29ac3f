//! The command lines of the services, here so that `rewind config` can show and document them.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "rewind coordinator",
    bin_name = "rewind coordinator",
    version,
    about = "Rewind coordinator: the gRPC job API; the elected leader drives jobs to their end",
    after_help = "Logging: REWIND_LOG sets the filter (default info); JSON lines when stderr is not a terminal."
)]
pub struct CoordinatorArgs {
    /// TOML file with settings (its [coordinator] table); flags and REWIND_* variables override it.
    #[arg(long, env = "REWIND_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective settings (and where each comes from) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: std::net::SocketAddr,
    /// Replica id for leader election and logs (default: host name and process id).
    #[arg(long, env = "REWIND_COORDINATOR_ID")]
    pub id: Option<String>,
    /// Leader lease TTL in seconds: a standby takes over this long after the leader dies.
    #[arg(long, env = "REWIND_COORDINATOR_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds between compactions of etcd's history by the leader (0: never, leave it to
    /// etcd's --auto-compaction-*). Without any compaction, claims slow down as history grows.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_ETCD_COMPACT_EVERY",
        default_value_t = 60
    )]
    pub etcd_compact_every: u64,
    /// Revisions each compaction keeps.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_ETCD_COMPACT_KEEP",
        default_value_t = 10_000
    )]
    pub etcd_compact_keep: i64,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (off when unset).
    #[arg(long, env = "REWIND_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "REWIND_COORDINATOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "REWIND_COORDINATOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "REWIND_COORDINATOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<std::path::PathBuf>,
    /// Require `authorization: Bearer <token>` on JobService calls; the token is this file's
    /// content. Health and reflection stay open.
    #[arg(long, env = "REWIND_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,
    /// Scoped bearer tokens (TOML, [[token]] tables: subject, token, tenants, sources,
    /// destinations): each may act only for its tenants, read only below its sources and write
    /// only below its destinations (docs/security.md). With --auth-token-file too, that token
    /// keeps all access.
    #[arg(long, env = "REWIND_COORDINATOR_TOKENS_FILE")]
    pub tokens_file: Option<std::path::PathBuf>,
    /// The longest range a job may cover, in hours: longer ones are refused whatever the
    /// request's own --max-range-hours says (a request may only ask for less).
    #[arg(
        long,
        env = "REWIND_COORDINATOR_MAX_RANGE_HOURS",
        default_value_t = 8784
    )]
    pub max_range_hours: u64,
    /// The largest event workers hold for a job, in bytes: a request's --max-event-bytes is
    /// capped to it (larger events are failed records, event_too_large). At most 1 GiB.
    #[arg(long, env = "REWIND_COORDINATOR_MAX_EVENT_BYTES", default_value_t = 64 << 20)]
    pub max_event_bytes: usize,
    /// Finished jobs etcd keeps (the newest; their history stays in the destination's
    /// manifests either way). Checked by the leader once a minute.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_KEEP_FINISHED_JOBS",
        default_value_t = 1000
    )]
    pub keep_finished_jobs: usize,
    /// Days a finished job stays in etcd.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_KEEP_FINISHED_DAYS",
        default_value_t = 30
    )]
    pub keep_finished_days: u64,
    /// The most shards of one tenant (org) that run at once across the fleet: `N` for every
    /// tenant, `ORG=N` for one (overrides N); repeat or separate with commas. 0 (the default):
    /// no cap. Stamped into each job accepted; workers claim within it (etcd keys under
    /// `tenants/ORG/slot/`).
    #[arg(
        long,
        env = "REWIND_COORDINATOR_TENANT_MAX_SHARDS",
        value_delimiter = ','
    )]
    pub tenant_max_shards: Vec<String>,
    /// Events per second one tenant's stream replays (Kafka, Kinesis, Pub/Sub) together send:
    /// `N` for every tenant, `ORG=N` for one (overrides N); 0 (the default): no budget. Each
    /// worker takes the share its running attempts are of the tenant's; a job's own
    /// `--max-events-per-sec` holds as well.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_TENANT_REPLAY_EVENTS_PER_SEC",
        value_delimiter = ','
    )]
    pub tenant_replay_events_per_sec: Vec<String>,
    /// Bytes (event values) per second one tenant's stream replays together send; as
    /// `--tenant-replay-events-per-sec`.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_TENANT_REPLAY_BYTES_PER_SEC",
        value_delimiter = ','
    )]
    pub tenant_replay_bytes_per_sec: Vec<String>,
    /// Requests per second one tenant's jobs of every kind together send to their sources'
    /// object stores (each listing call and each object read is one); as
    /// `--tenant-replay-events-per-sec`.
    #[arg(
        long,
        env = "REWIND_COORDINATOR_TENANT_SOURCE_REQUESTS_PER_SEC",
        value_delimiter = ','
    )]
    pub tenant_source_requests_per_sec: Vec<String>,
}

#[derive(Debug, Parser)]
#[command(
    name = "rewind worker",
    bin_name = "rewind worker",
    version,
    about = "Rewind worker: leases hour shards through etcd and runs them",
    after_help = "Logging: REWIND_LOG sets the filter (default info); JSON lines when stderr is not a terminal."
)]
pub struct WorkerArgs {
    /// TOML file with settings (its [worker] table); flags and REWIND_* variables override it.
    #[arg(long, env = "REWIND_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Print the effective settings (and where each comes from) and exit.
    #[arg(long)]
    pub print_config: bool,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Shards this process runs at once (default: the number of CPUs).
    #[arg(long, env = "REWIND_WORKER_SLOTS")]
    pub slots: Option<usize>,
    /// Worker id in claims and logs (default: host name and process id).
    #[arg(long, env = "REWIND_WORKER_ID")]
    pub id: Option<String>,
    /// Lease TTL in seconds; a frozen or partitioned worker loses its shards after this long.
    #[arg(long, env = "REWIND_WORKER_LEASE_TTL", default_value_t = 10)]
    pub lease_ttl: u64,
    /// Seconds running shards may take to finish after SIGTERM before they are released.
    #[arg(long, env = "REWIND_WORKER_GRACE", default_value_t = 30)]
    pub grace: u64,
    /// How often to look for new jobs, in milliseconds.
    #[arg(long, env = "REWIND_WORKER_POLL_MS", default_value_t = 500)]
    pub poll_ms: u64,
    /// Serve Prometheus /metrics, /healthz and /readyz on this address (off when unset).
    #[arg(long, env = "REWIND_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// How a service reaches etcd: the same flags for the coordinator and the workers.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "REWIND_ETCD")]
    pub etcd: String,
    /// CA certificate (PEM) to trust for etcd's TLS (use https:// endpoints).
    #[arg(long, env = "REWIND_ETCD_CA")]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; needs --etcd-key.
    #[arg(long, env = "REWIND_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// The private key of --etcd-cert (PEM).
    #[arg(long, env = "REWIND_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// etcd user, when etcd has authentication enabled.
    #[arg(long, env = "REWIND_ETCD_USER")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "REWIND_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<std::path::PathBuf>,
    /// Key prefix in etcd (several Rewind installations can share one etcd).
    #[arg(long, env = "REWIND_ETCD_PREFIX", default_value = rewind_etcd::DEFAULT_ROOT)]
    pub etcd_prefix: String,
}

impl EtcdArgs {
    pub fn endpoints(&self) -> Result<Vec<String>, String> {
        crate::etcd_endpoints(&self.etcd)
    }

    /// Connects, retrying with backoff while etcd is unreachable (each failure is logged).
    pub async fn connect(
        &self,
        endpoints: &[String],
    ) -> Result<rewind_etcd::EtcdStore, rewind_common::shard_store::StoreError> {
        let security = rewind_etcd::EtcdSecurity {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password_file: self.etcd_password_file.clone(),
        };
        rewind_etcd::EtcdStore::connect_retrying(endpoints, &self.etcd_prefix, &security, None)
            .await
    }
}

/// A process id for claims, leadership and logs: host name and process id.
pub fn default_id(fallback_host: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| fallback_host.into());
    format!("{}-{}", host.trim(), std::process::id())
}
