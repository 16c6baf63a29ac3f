//! The `rewind` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod api;
mod changes;
mod client;
mod coordinator;
mod druid;
mod embedded;
mod flows_test;
mod generate;
mod guard;
mod ingest;
mod notify;
mod repair;
mod replay;
mod retry;
mod ui;
mod worker;

#[derive(Debug, Parser)]
#[command(
    name = "rewind",
    version,
    about = "Recover and replay event data from object-storage archives",
    after_help = "Logging: REWIND_LOG sets the filter (default warn); JSON lines when stderr is not a terminal."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TOML file with settings (its [cli] table); flags and REWIND_* variables override it.
    #[arg(long, global = true, env = "REWIND_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recover a date range of an archive into Hive-partitioned Parquet, in one process.
    Run(RunArgs),
    /// Write a deterministic, realistic sample archive.
    Gen(GenArgs),
    /// Submit a job to a coordinator (the distributed mode); prints the job id.
    Submit(SubmitArgs),
    /// Show the plan of a job (shards, objects, bytes) without running it.
    Plan(PlanArgs),
    /// Show one job's state and counts.
    Status(JobRef),
    /// Follow a job with a live progress bar; exits with the job's outcome.
    Watch(JobRef),
    /// List the coordinator's jobs, newest first.
    Jobs(JobsArgs),
    /// Cancel a job: workers stop its shards, no _SUCCESS is written.
    Cancel(JobRef),
    /// The history of a destination: every job, rollback and re-apply, newest first (`changes
    /// show` one change, `changes expire` old ones).
    Changes(changes::ChangesArgs),
    /// Undo the newest applied change of a destination, a given one, or all after `--to`.
    Rollback(changes::RollbackArgs),
    /// Apply a rolled-back change again.
    Reapply(changes::ReapplyArgs),
    /// Delete or replace rows of a Parquet dataset by key, as one reversible change.
    Repair(repair::RepairArgs),
    /// Replay into Kafka day by day, guarded: back up and clear the sinks downstream of the
    /// topic, replay, then drop the backup or restore it; notify per day and per job.
    Replay(replay::ReplayArgs),
    /// Ingest a landing zone's pending objects into a trusted zone, exactly once per object.
    Ingest(ingest::IngestArgs),
    /// Run again only the failed shards of a finished job, into the same execution, as a
    /// change of its own.
    Retry(retry::RetryArgs),
    /// Serve the status page of a destination (its jobs, from its change log and manifests),
    /// for runs without servers.
    Ui(ui::UiArgs),
    /// Try repair flows on real events before running a job.
    #[command(subcommand)]
    Flows(FlowsCommand),
    /// Show the effective settings (and where each comes from), or document them all.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a coordinator: the gRPC job API; the elected leader drives jobs to their end
    /// (`rewind coordinator --help`).
    #[command(disable_help_flag = true)]
    Coordinator(ServiceArgs),
    /// Run a worker: leases shards through etcd and runs them (`rewind worker --help`).
    #[command(disable_help_flag = true)]
    Worker(ServiceArgs),
}

/// The arguments of a service, parsed by the service itself (only listed here for `--help`).
#[derive(Debug, Args)]
struct ServiceArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    args: Vec<std::ffi::OsString>,
}

#[derive(Debug, Subcommand)]
enum FlowsCommand {
    /// Run a flow config on a sample of archived events: per flow, how many matched and a
    /// before/after diff of a few events. Writes nothing.
    Test(flows_test::FlowsTestArgs),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective settings of a binary, secrets masked.
    Show {
        /// Which binary: cli, coordinator or worker.
        #[arg(long = "for", default_value = "cli")]
        binary: String,
    },
    /// Print docs/configuration.md (every setting of every binary).
    Docs,
}

#[derive(Debug, Args)]
pub struct Remote {
    /// The coordinator's gRPC address (https://… for TLS).
    #[arg(long, env = "REWIND_COORDINATOR", default_value = client::DEFAULT_COORDINATOR)]
    pub coordinator: String,
    /// File holding the bearer token the coordinator requires (or set $REWIND_TOKEN).
    #[arg(long, env = "REWIND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for the coordinator's TLS certificate; implies TLS.
    #[arg(long, env = "REWIND_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --tls-key.
    #[arg(long, env = "REWIND_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "REWIND_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// A location as the processes of a job need it: a local path made absolute (they may run
/// elsewhere, in another directory); URLs and empty values as given.
pub fn absolute_location(p: &str) -> String {
    if p.contains("://") || p.trim().is_empty() {
        p.to_string()
    } else {
        std::path::absolute(p)
            .map(|a| a.display().to_string())
            .unwrap_or_else(|_| p.to_string())
    }
}

/// How commands that submit on their own (`repair`, `replay`, `ingest` with `--coordinator`)
/// reach the coordinator, as `rewind submit` does.
#[derive(Debug, Args)]
pub struct CoordinatorAuth {
    /// With --coordinator: the bearer token file and the CA to trust (as `rewind submit`).
    #[arg(long, env = "REWIND_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "REWIND_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl Remote {
    /// The coordinator a command of its own submits to: no client certificate, the token file
    /// and CA given.
    pub fn to(coordinator: &str, reach: &CoordinatorAuth, json: bool) -> Remote {
        Remote {
            coordinator: coordinator.to_string(),
            token_file: reach.token_file.clone(),
            tls_ca: reach.tls_ca.clone(),
            tls_cert: None,
            tls_key: None,
            json,
        }
    }
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state: running, cancelling, succeeded, failed, cancelled.
    #[arg(long)]
    pub state: Option<String>,
    /// Only jobs of this tenant (org id).
    #[arg(long)]
    pub org: Option<String>,
    /// Only jobs submitted at or after this time (YYYY-MM-DD[THH[:MM]] UTC, or RFC 3339).
    #[arg(long, value_parser = rewind_cli::parse_instant)]
    pub since: Option<i64>,
    /// Only jobs submitted before this time (same forms).
    #[arg(long, value_parser = rewind_cli::parse_instant)]
    pub until: Option<i64>,
    /// At most this many jobs (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct JobRef {
    /// The job id (as printed by `rewind submit`).
    pub job: String,
    #[command(flatten)]
    pub remote: Remote,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub remote: Remote,
    /// Wait for the job to finish: print its summary and exit with its outcome (0, 1).
    #[arg(long)]
    pub wait: bool,
    /// How the job shares the fleet's worker slots with other jobs: interactive (8 shares),
    /// normal (4) or backfill (1); tenants (orgs) share first, by their most urgent job
    /// (docs/scheduling.md).
    #[arg(long, value_parser = ["interactive", "normal", "backfill"])]
    pub priority: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub remote: Remote,
}

/// What to recover: the same flags for `rewind run`, `rewind submit` and `rewind plan`.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// The archive: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX], laid out as --layout describes. A
    /// {org} placeholder is replaced with the lowercase org id (s3://pismo-dataplatform-{org}).
    #[arg(long)]
    pub source: String,
    /// Tenant (organisation) id.
    #[arg(long)]
    pub org: String,
    /// First hour to recover, inclusive, UTC: YYYY-MM-DD (the whole day) or YYYY-MM-DDTHH.
    #[arg(long)]
    pub start: String,
    /// Last hour to recover, inclusive, UTC: YYYY-MM-DD (the whole day) or YYYY-MM-DDTHH.
    #[arg(long)]
    pub end: String,
    /// Where to write Parquet (execution_id=<job>/org_id=<org>/date=<day>/): a directory,
    /// s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX].
    #[arg(long)]
    pub dest: String,
    /// Where an hour's objects live below --source.
    #[arg(long, default_value = rewind_common::layout::DEFAULT_LAYOUT)]
    pub layout: String,
    /// Keep only events whose arrival_epoch falls inside the requested range.
    #[arg(long)]
    pub arrival_filter: bool,
    /// parquet (a Hive-style dataset) or delta (a Delta Lake table at --dest, created on first
    /// use; each job is one commit of its log, partitioned by date).
    #[arg(long, value_parser = ["parquet", "delta"])]
    pub table_format: Option<String>,
    /// Kafka replay of archived Kafka records: where each envelope's value, key, headers,
    /// timestamp and partition are — a preset (kcat, aiven-jsonl, json) or
    /// value=$.PATH[:json|string|base64],key=…,headers=$.PATH[:object|pairs|list|list-base64],
    /// timestamp=$.PATH,partition=$.PATH. Records go out as archived (no lineage headers).
    #[arg(long)]
    pub envelope: Option<String>,
    /// With --envelope: send each record to its archived partition (a record whose partition
    /// the topic does not have is a failed record).
    #[arg(long)]
    pub preserve_partition: bool,
    /// With --envelope: add Rewind's lineage headers to the archived ones.
    #[arg(long)]
    pub lineage_headers: bool,
    /// Where each row goes below the job's prefix, Hive-style, from its fields and dates, e.g.
    /// `domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}`
    /// (default: org_id=…/date=… of the archive hour).
    #[arg(long)]
    pub partition_by: Option<String>,
    /// Where failed records go, a directory, s3://, gs:// or az:// URL (default: <dest>/_failed).
    #[arg(long)]
    pub failed_output: Option<String>,
    /// Largest event accepted, in bytes; larger ones are failed records.
    #[arg(long, default_value_t = rewind_common::request::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Longest range accepted, in hours.
    #[arg(long, default_value_t = rewind_common::range::DEFAULT_MAX_HOURS)]
    pub max_range_hours: u64,
    /// Attempts per shard before the shard (and the job) fails.
    #[arg(long, default_value_t = rewind_common::request::DEFAULT_MAX_ATTEMPTS)]
    pub max_attempts: u32,
    /// Where events routed to unrecoverable go, a directory, s3://, gs:// or az:// URL (default:
    /// <dest>/_unrecoverable).
    #[arg(long)]
    pub unrecoverable_output: Option<String>,
    /// Keep only events of this type (exact, or a glob with * and ?); repeatable.
    #[arg(long = "event-type", value_name = "TYPE")]
    pub event_types: Vec<String>,
    /// Keep only events of this domain (exact, or a glob with * and ?); repeatable.
    #[arg(long = "domain", value_name = "DOMAIN")]
    pub domains: Vec<String>,
    /// Keep only events for which this RFC 9535 filter expression holds, `@` being the event,
    /// e.g. '@.data.amount.value > 100 && match(@.data.amount.currency, "(?i)brl")'.
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Repair flows to apply (JSON or YAML; see docs/flows.md); try them with `rewind flows test`.
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
    /// Drop repeated events: event_id or event_id,timestamp (within a shard and against the
    /// --dedup-window-hours before it; the earliest copy is kept).
    #[arg(long, value_name = "KEY")]
    pub dedup: Option<String>,
    /// With --dedup: hours before each shard whose events count as seen (0-24; each costs one
    /// more read of that hour).
    #[arg(long, default_value_t = rewind_common::request::DEFAULT_DEDUP_WINDOW_HOURS)]
    pub dedup_window_hours: u32,
    /// Where recovered events go: parquet (in --dest), kafka (--brokers, --topic), kinesis
    /// (--kinesis-stream) or pubsub (--topic projects/P/topics/T); for the streams --dest keeps
    /// the manifests, checkpoints and the failed and unrecoverable records.
    #[arg(long, value_name = "parquet|kafka|kinesis|pubsub")]
    pub sink: Option<String>,
    /// Kinesis data stream to put records into: its name or ARN (it must exist). Region from
    /// --region, credentials from the standard AWS chain. Delivery is at-least-once (Kinesis
    /// has no transactions).
    #[arg(long, value_name = "NAME|ARN")]
    pub kinesis_stream: Option<String>,
    /// A Kinesis-compatible endpoint instead of AWS's, e.g. http://127.0.0.1:4566.
    #[arg(long, value_name = "URL")]
    pub kinesis_endpoint_url: Option<String>,
    /// Kinesis: put each event as {"rewind":{"job","source_key","offset","event_id"},"event":EVENT}
    /// (Kinesis records have no headers; by default the data is the event's bytes alone).
    #[arg(long)]
    pub wrap_lineage: bool,
    /// Kafka bootstrap servers, host:port[,host:port...].
    #[arg(long)]
    pub brokers: Option<String>,
    /// Kafka topic to produce to, or Pub/Sub topic to publish to (projects/PROJECT/topics/TOPIC;
    /// credentials from Google's application default chain, or PUBSUB_EMULATOR_HOST). It must
    /// exist.
    #[arg(long)]
    pub topic: Option<String>,
    /// Record key (Kafka), partition key (Kinesis) or ordering key (Pub/Sub, with --ordered):
    /// event_id (default), cid, none, or a JSONPath such as $.data.account_id. Kinesis records
    /// without one get their place in the archive as key.
    #[arg(long)]
    pub key: Option<String>,
    /// Record batch compression: none (default), gzip, snappy, lz4, zstd.
    #[arg(long)]
    pub compression: Option<String>,
    /// Any librdkafka property, key=value (security.protocol, sasl.mechanism, ssl.ca.location...);
    /// repeatable.
    #[arg(long = "kafka-option", value_name = "KEY=VALUE")]
    pub kafka_options: Vec<String>,
    /// A secret librdkafka property by reference: KEY=env:NAME or KEY=file:PATH (sasl.password,
    /// ssl.key.password...), resolved by each process that connects; repeatable. Secrets are
    /// refused in --kafka-option: a value given there would be stored and shown.
    #[arg(long = "kafka-secret", value_name = "KEY=REF")]
    pub kafka_secrets: Vec<String>,
    /// at-least-once (default): every event acknowledged before its shard commits;
    /// exactly-once (Kafka only): each shard one Kafka transaction.
    #[arg(long)]
    pub delivery: Option<String>,
    /// Kafka, Kinesis, Pub/Sub: save a shard's progress every this many acknowledged records (or each second)
    /// and keep at most this many in flight (default 50,000); a crash produces at most about
    /// twice this again.
    #[arg(long, value_name = "N")]
    pub checkpoint_events: Option<u64>,
    /// Kafka, Kinesis, Pub/Sub: events per second for the whole job (all workers together).
    #[arg(long, value_name = "N")]
    pub max_events_per_sec: Option<u64>,
    /// Kafka, Kinesis, Pub/Sub: value bytes per second for the whole job (all workers together).
    #[arg(long, value_name = "N")]
    pub max_bytes_per_sec: Option<u64>,
    /// Kafka, Kinesis, Pub/Sub: keep the archive's order per key within each hour (objects in
    /// name order, events in byte order; one request in flight per broker connection, one
    /// PutRecords call in flight with at most one record per key, or one publish in flight
    /// with ordering keys).
    #[arg(long)]
    pub ordered: bool,
    /// Replay only this archive object: its key below --source (it must lie in the range).
    #[arg(long, value_name = "KEY")]
    pub object: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

/// How to reach S3 when --source or --dest is an s3:// URL. Credentials come from the standard
/// AWS chain (environment, profile, web identity / IRSA, container or instance metadata).
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// AWS region (default: from the AWS environment or profile; us-east-1 for a custom endpoint).
    #[arg(long)]
    pub region: Option<String>,
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph, ...), e.g. http://127.0.0.1:9000.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// Address buckets as ENDPOINT/BUCKET instead of BUCKET.ENDPOINT (most S3-compatible stores).
    #[arg(long)]
    pub force_path_style: bool,
    /// IAM role to assume for reading the source (STS AssumeRole, refreshed before expiry).
    #[arg(long)]
    pub source_role_arn: Option<String>,
    /// External id the source role's trust policy requires: a literal (stored with the job,
    /// masked in answers) or a reference, env:NAME or file:PATH, each process resolves.
    #[arg(long, requires = "source_role_arn")]
    pub source_external_id: Option<String>,
    /// IAM role to assume for writing the destination and failed output.
    #[arg(long)]
    pub dest_role_arn: Option<String>,
    /// External id the destination role's trust policy requires (a literal, env:NAME or
    /// file:PATH).
    #[arg(long, requires = "dest_role_arn")]
    pub dest_external_id: Option<String>,
    /// Session name of assumed roles (shows in CloudTrail; default rewind).
    #[arg(long)]
    pub role_session_name: Option<String>,
    /// Multipart upload part size in MiB (5-5120): the memory each file being written holds.
    #[arg(long, default_value_t = rewind_common::location::DEFAULT_PART_SIZE_MIB)]
    pub s3_part_size_mib: u32,
    /// Objects a shard downloads ahead of the one it decodes (concurrent GETs per shard).
    #[arg(long, default_value_t = rewind_common::location::DEFAULT_READ_AHEAD)]
    pub s3_read_ahead: u32,
}

impl S3Args {
    pub fn options(&self) -> rewind_common::S3Options {
        rewind_common::S3Options {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            force_path_style: self.force_path_style,
            source_role_arn: self.source_role_arn.clone(),
            source_external_id: self.source_external_id.clone(),
            dest_role_arn: self.dest_role_arn.clone(),
            dest_external_id: self.dest_external_id.clone(),
            role_session_name: self.role_session_name.clone(),
            part_size_mib: self.s3_part_size_mib,
            read_ahead: self.s3_read_ahead,
        }
    }
}

impl JobArgs {
    /// The request, with local paths made absolute (a coordinator and workers may run
    /// elsewhere); URLs stay as given.
    pub fn request(&self) -> Result<rewind_common::JobRequest, rewind_common::RequestError> {
        let abs = absolute_location;
        let flows = match &self.flows {
            None => None,
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                rewind_common::RequestError::new(
                    "--flows",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
        };
        Ok(rewind_common::JobRequest {
            source: abs(&self.source),
            org: self.org.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            dest: abs(&self.dest),
            layout: self.layout.clone(),
            arrival_filter: self.arrival_filter,
            failed_output: self.failed_output.as_deref().map(abs),
            max_event_bytes: self.max_event_bytes,
            max_attempts: self.max_attempts,
            max_range_hours: self.max_range_hours,
            s3: self.s3.options(),
            unrecoverable_output: self.unrecoverable_output.as_deref().map(abs),
            event_types: self.event_types.clone(),
            domains: self.domains.clone(),
            filter: self.filter.clone(),
            flows,
            dedup: self.dedup.clone(),
            dedup_window_hours: self.dedup_window_hours,
            sink: self.sink.clone(),
            brokers: self.brokers.clone(),
            topic: self.topic.clone(),
            key: self.key.clone(),
            compression: self.compression.clone(),
            kafka_options: self.kafka_options.clone(),
            kafka_secrets: self.kafka_secrets.clone(),
            delivery: self.delivery.clone(),
            checkpoint_events: self.checkpoint_events,
            max_events_per_sec: self.max_events_per_sec,
            max_bytes_per_sec: self.max_bytes_per_sec,
            ordered: self.ordered,
            object: self.object.clone(),
            table_format: self.table_format.clone(),
            partition_by: self.partition_by.clone(),
            ingest: false,
            ingest_to: None,
            envelope: self.envelope.clone(),
            preserve_partition: self.preserve_partition,
            lineage_headers: self.lineage_headers,
            repair: None,
            guard: None,
            priority: None,
            kinesis_stream: self.kinesis_stream.clone(),
            kinesis_endpoint_url: self.kinesis_endpoint_url.clone(),
            wrap_lineage: self.wrap_lineage,
        })
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub job: JobArgs,
    /// Shards processed in parallel (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Where to write the archive: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX] (`{org}` allowed).
    #[arg(long)]
    pub out: String,
    #[arg(long)]
    pub org: String,
    /// First hour: YYYY-MM-DDTHH (or YYYY-MM-DD for its first hour).
    #[arg(long)]
    pub start: String,
    #[arg(long, default_value_t = 1)]
    pub hours: u32,
    #[arg(long, default_value_t = 12)]
    pub objects_per_hour: u32,
    /// Uncompressed size of each object, in MB (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    pub object_mb: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// none, gzip, zstd or mixed.
    #[arg(long, default_value = "none")]
    pub compression: String,
    /// easy (compact JSON, the usual key order) or hard (what real archives also hold:
    /// `\uXXXX` escapes, shuffled and escaped keys, pretty-printed events, unicode, numbers of
    /// every shape, deeper data).
    #[arg(long, default_value = "easy", value_parser = ["easy", "hard"])]
    pub profile: String,
    /// With an s3:// --out: AWS region (credentials from the standard AWS chain).
    #[arg(long)]
    pub region: Option<String>,
    /// With an s3:// --out: the S3 endpoint of an S3-compatible store (MinIO, ...).
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// With an s3:// --out: address buckets as ENDPOINT/BUCKET.
    #[arg(long)]
    pub force_path_style: bool,
    #[arg(long)]
    pub json: bool,
}

/// Exit codes: 0 done, 1 the job failed, 2 a bad request.
pub enum Failure {
    /// Exit 2: nothing was done.
    BadRequest(String),
    /// Exit 1: the job failed (or could not run).
    Job(String),
    /// Exit 130: stopped by Ctrl-C or SIGTERM; what was swept and what stays.
    Interrupted(String),
}

impl From<rewind_common::RequestError> for Failure {
    fn from(e: rewind_common::RequestError) -> Self {
        Failure::BadRequest(e.to_string())
    }
}

impl From<rewind_coordinator::core::CoreError> for Failure {
    fn from(e: rewind_coordinator::core::CoreError) -> Self {
        match e {
            rewind_coordinator::core::CoreError::BadRequest(m) => Failure::BadRequest(m),
            other => Failure::Job(other.to_string()),
        }
    }
}

fn config_command(c: ConfigCommand, file: Option<PathBuf>) -> Result<(), Failure> {
    use clap::CommandFactory;
    use rewind_cli::args::{CoordinatorArgs, WorkerArgs};
    match c {
        ConfigCommand::Docs => {
            print!(
                "{}",
                rewind_cli::config::docs(&[
                    ("coordinator", CoordinatorArgs::command()),
                    ("worker", WorkerArgs::command()),
                    ("cli", Cli::command()),
                ])
            );
            Ok(())
        }
        ConfigCommand::Show { binary } => {
            let mut argv: Vec<std::ffi::OsString> = vec![binary.clone().into()];
            if let Some(f) = file {
                argv.push("--config".into());
                argv.push(f.into());
            }
            let shown = match binary.as_str() {
                "coordinator" => {
                    rewind_cli::config::effective("coordinator", CoordinatorArgs::command(), &argv)
                }
                "worker" => rewind_cli::config::effective("worker", WorkerArgs::command(), &argv),
                "cli" => {
                    // The client settings, as `rewind jobs` would use them.
                    argv.insert(1, "jobs".into());
                    rewind_cli::config::effective("cli", Cli::command(), &argv)
                }
                other => {
                    return Err(Failure::BadRequest(format!(
                        "invalid --for: {other}; one of cli, coordinator, worker"
                    )));
                }
            };
            print!("{}", shown.map_err(Failure::BadRequest)?);
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    rewind_common::malloc::tune_allocator();
    rewind_cli::init_crypto();
    // The services parse their own command lines (layered with their config sections), so they
    // are dispatched before the CLI's parser sees the arguments.
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let service = argv.get(1).and_then(|a| a.to_str()).map(str::to_owned);
    if let Some(name @ ("coordinator" | "worker")) = service.as_deref() {
        argv.remove(1);
        argv[0] = format!("rewind {name}").into();
        return match name {
            "coordinator" => coordinator::main(argv),
            _ => worker::main(argv),
        };
    }
    let cli: Cli = rewind_cli::config::parse("cli");
    // Reached when options came before the service's name (`rewind --config F worker …`).
    let service = |name: &str, config: Option<PathBuf>, args: Vec<std::ffi::OsString>| {
        let mut argv: Vec<std::ffi::OsString> = vec![format!("rewind {name}").into()];
        if let Some(path) = config {
            argv.extend(["--config".into(), path.into_os_string()]);
        }
        argv.extend(args);
        argv
    };
    match cli.command {
        Command::Coordinator(a) => {
            return coordinator::main(service("coordinator", cli.config, a.args));
        }
        Command::Worker(a) => return worker::main(service("worker", cli.config, a.args)),
        _ => {}
    }
    let _telemetry = rewind_cli::init_logging("warn", "rewind");
    let result = match cli.command {
        Command::Run(args) => embedded::run(args),
        Command::Gen(args) => generate::run(args),
        Command::Submit(a) => client::submit(&a.remote, &a.job, a.priority.clone(), a.wait),
        Command::Plan(a) => client::plan(&a.remote, &a.job),
        Command::Status(a) => client::status(&a.remote, &a.job),
        Command::Watch(a) => client::watch(&a.remote, &a.job),
        Command::Jobs(a) => client::jobs(&a),
        Command::Cancel(a) => client::cancel(&a.remote, &a.job),
        Command::Changes(a) => changes::changes(a),
        Command::Rollback(a) => changes::rollback(a),
        Command::Reapply(a) => changes::reapply(a),
        Command::Repair(a) => repair::run(a),
        Command::Replay(a) => replay::run(a),
        Command::Ingest(a) => ingest::run(a),
        Command::Retry(a) => retry::run(a),
        Command::Ui(a) => ui::run(a),
        Command::Flows(FlowsCommand::Test(a)) => flows_test::run(a),
        Command::Config(c) => config_command(c, cli.config),
        Command::Coordinator(_) | Command::Worker(_) => unreachable!("dispatched above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadRequest(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Job(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
        Err(Failure::Interrupted(message)) => {
            eprintln!("interrupted: {message}");
            ExitCode::from(130)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `config show` over the real `run` command line: the role external id and a Kafka option
    /// carrying a secret are masked, everything else is shown as given.
    #[test]
    fn config_show_masks_the_real_secret_settings() {
        let cmd = Cli::command();
        let argv = [
            "rewind",
            "run",
            "--source",
            "/a",
            "--org",
            "TN-1",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-01",
            "--dest",
            "/b",
            "--source-role-arn",
            "arn:aws:iam::111122223333:role/recovery",
            "--source-external-id",
            "ext-7731",
            "--kafka-option",
            "sasl.password=hunter2",
            "--kafka-option",
            "acks=all",
            "--kafka-secret",
            "ssl.key.password=env:KEY_PW",
        ];
        let matches = cmd.clone().try_get_matches_from(argv).unwrap();
        let text = rewind_cli::config::show("cli", &cmd, &matches, &Default::default());
        assert!(!text.contains("ext-7731"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("sasl.password=****"), "{text}");
        assert!(text.contains("acks=all"), "{text}");
        assert!(text.contains("ssl.key.password=env:KEY_PW"), "{text}");
    }
}
