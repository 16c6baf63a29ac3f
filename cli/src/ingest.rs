//! `rewind ingest`: a landing zone's `pending/` objects into a trusted zone, exactly once per
//! object, in one pass. A batch:
//! 1. **open**: a marker `<dest>/_rewind/ingest/open/<job>.json` names the batch's job before
//!    it runs (its id is chosen first);
//! 2. **run** one job of the usual lifecycle over every object below `--source` (any names,
//!    concatenated or line-delimited JSON, plain, gzip or zstd), partitioned by `--partition-by`
//!    (default: the distributor layout), into a staging execution below
//!    `<dest>/_rewind/ingest/staging/`; failed records go to `<dest>/_failed/` as usual;
//! 3. **publish** its files into the partitions of the trusted zone, with `--dedup` dropping rows
//!    whose key the trusted zone's touched partitions or the batch hold already;
//! 4. **record** the change in the trusted zone's log: the files published and the landing
//!    objects consumed (key, tag, size) — `rewind rollback` removes the files;
//! 5. **move** the consumed objects to `processed/date=<run date>/` (server-side copies, then
//!    DeleteObjects of up to 1,000 keys a request), only after the change is recorded;
//! 6. **close**: the staging execution and the marker go.
//!
//! Every step is idempotent, so a run killed at any moment is completed by the next run (which
//! looks for open markers first): a batch whose job had committed is published, recorded and
//! moved; one whose job had not is dropped and its objects, still pending, are ingested again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rewind_common::change::IngestEffect;
use rewind_common::lifecycle::{JobManifest, JobPhase};
use rewind_common::location::JobSide;
use rewind_common::output::ShardPlan;
use rewind_common::storage::{ObjectMeta, OutputStore, StorageError};
use rewind_common::{JobId, JobRequest, Location, OrgId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Failure, S3Args};

/// The distributor job's layout.
pub const DISTRIBUTOR_LAYOUT: &str =
    "domain_event_type={domain}-{event_type}/year={ts:YYYY}/month={ts:MM}/day={ts:DD}";

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// The landing zone's pending prefix (a directory, s3://, gs:// or az:// URL): every object below
    /// it is ingested, whatever its name.
    #[arg(long)]
    pub source: String,
    /// The trusted zone (a directory, s3://, gs:// or az:// URL).
    #[arg(long)]
    pub dest: String,
    /// The tenant whose events these are (events of another org are failed records).
    #[arg(long)]
    pub org: String,
    /// Where consumed objects go, below `date=<run date>/` (default: `processed/` beside the
    /// pending prefix; it must be in the same directory tree, bucket or container).
    #[arg(long)]
    pub processed: Option<String>,
    /// Where each row goes in the trusted zone (see `rewind run --partition-by`).
    #[arg(long, default_value = DISTRIBUTOR_LAYOUT)]
    pub partition_by: String,
    /// Drop events whose key is already in the batch or in the trusted zone's partitions the
    /// batch touches: event_id or event_id,timestamp.
    #[arg(long, value_name = "KEY")]
    pub dedup: Option<String>,
    /// Repair flows to apply (JSON or YAML; see docs/flows.md).
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
    /// Where failed records go (default: <dest>/_failed).
    #[arg(long)]
    pub failed_output: Option<String>,
    /// Largest event accepted, in bytes; larger ones are failed records.
    #[arg(long, default_value_t = rewind_common::request::DEFAULT_MAX_EVENT_BYTES)]
    pub max_event_bytes: usize,
    /// Shards processed in parallel (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Keep ingesting new objects as they land, one batch (one change) at a time, until
    /// stopped.
    #[arg(long)]
    pub watch: bool,
    /// With --watch: seconds between looks at the landing zone.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Print one JSON object per batch on stdout.
    #[arg(long)]
    pub json: bool,
    /// Run the batch as a job of this coordinator (its gRPC address): its workers read the
    /// objects (shards by size), its commit publishes, records and moves. Waits for the job.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// With --coordinator: how the job shares the fleet's worker slots with other jobs:
    /// interactive (8 shares), normal (4) or backfill (1) (docs/scheduling.md).
    #[arg(long, requires = "coordinator", value_parser = ["interactive", "normal", "backfill"])]
    pub priority: Option<String>,
    #[command(flatten)]
    pub reach: crate::CoordinatorAuth,
    #[command(flatten)]
    pub s3: S3Args,
}

/// An open batch, as its marker records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    job: String,
    run_date: String,
}

/// A test hook: abort after the Nth step (`REWIND_FAILPOINT=ingest-step-then-die`,
/// `REWIND_FAILPOINT_AFTER=N`).
fn step_done() {
    rewind_common::step_failpoint("ingest-step-then-die");
}

/// The stores and prefixes of one ingest: what a batch's finish needs (in `rewind ingest`, and
/// in a coordinator finishing a distributed ingest).
pub struct Zones {
    /// The trusted zone, and its staging prefix as a store of its own (the staged jobs' log).
    pub dest: Arc<dyn OutputStore>,
    pub staging: Arc<dyn OutputStore>,
    /// The landing zone's root (the parent of the pending prefix), and the two prefixes in it.
    pub landing: Arc<dyn OutputStore>,
    pub pending: String,
    pub processed: String,
    pub pending_url: String,
    pub processed_url: String,
    pub dedup: Option<Vec<String>>,
}

impl Zones {
    /// The zones of a distributed ingest, as its job says (opened where it is finished).
    pub async fn of(
        t: &rewind_common::request::IngestTarget,
        org: &OrgId,
        s3: &rewind_common::S3Options,
    ) -> Result<Zones, String> {
        let parse = |what: &'static str, url: &str| {
            Location::parse(what, url, org).map_err(|e| e.to_string())
        };
        let trusted = parse("--dest", &t.trusted)?;
        let landing = parse("--source", &t.landing)?;
        let staging = trusted.join(STAGING.trim_end_matches('/'));
        let open = |loc: Location, side: JobSide| async move {
            rewind_s3::open_output(&loc, s3, side)
                .await
                .map_err(|e| format!("opening {loc}: {e}"))
        };
        Ok(Zones {
            dest: open(trusted.clone(), JobSide::Dest).await?,
            staging: open(staging, JobSide::Dest).await?,
            landing: open(landing.clone(), JobSide::Source).await?,
            pending_url: landing.join(&t.pending).to_string(),
            processed_url: landing.join(&t.processed).to_string(),
            pending: t.pending.clone(),
            processed: t.processed.clone(),
            dedup: t
                .dedup
                .as_deref()
                .map(|d| d.split(',').map(str::to_string).collect()),
        })
    }
}

/// A coordinator's end of a distributed ingest's commit ([`SinkCheck::ingest_finish`]).
pub fn finish_distributed(
    spec: &rewind_common::JobSpec,
    s3: &rewind_common::S3Options,
    manifest: &JobManifest,
) -> Result<(), String> {
    let Some(t) = &spec.ingest_to else {
        return Ok(());
    };
    let job = spec.job.to_string();
    tokio::runtime::Handle::current().block_on(async {
        let zones = Zones::of(t, &spec.org, s3).await?;
        let done = publish_record_move(&zones, &job, &run_date_of(&job), manifest)
            .await
            .map_err(|e| crate::replay::failure_text(&e))?;
        tracing::info!(
            job = %job,
            files = done.files,
            rows = done.rows,
            duplicates = done.duplicates,
            consumed = done.consumed,
            change = %done.change,
            "ingest published and its objects moved"
        );
        Ok(())
    })
}

struct Ctx {
    args: IngestArgs,
    request: JobRequest,
    zones: Zones,
    workers: usize,
}

const OPEN: &str = "_rewind/ingest/open/";
const STAGING: &str = "_rewind/ingest/staging/";

fn execution(job: &str) -> String {
    format!("{STAGING}execution_id={job}/")
}

/// The landing root (the pending prefix's parent) and the pending prefix's name in it.
fn parent(loc: &Location) -> Result<(Location, String), String> {
    match loc {
        Location::Local(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("has no parent directory")?;
            let up = p.parent().ok_or("has no parent directory")?;
            Ok((Location::Local(up.to_path_buf()), format!("{name}/")))
        }
        Location::S3 { prefix, .. }
        | Location::Azure { prefix, .. }
        | Location::Gcs { prefix, .. } => {
            let p = prefix.trim_end_matches('/');
            if p.is_empty() {
                return Err("is a whole bucket: give the pending prefix".into());
            }
            let (up, name) = match p.rfind('/') {
                Some(i) => (format!("{}/", &p[..i]), &p[i + 1..]),
                None => (String::new(), p),
            };
            Ok((loc.with_prefix(up), format!("{name}/")))
        }
    }
}

/// `loc` as a prefix below `root`, if it is below it.
fn below(loc: &Location, root: &Location) -> Option<String> {
    match (loc, root) {
        (Location::Local(p), Location::Local(r)) => p
            .strip_prefix(r)
            .ok()
            .and_then(|rel| rel.to_str())
            .filter(|rel| !rel.is_empty())
            .map(|rel| format!("{}/", rel.trim_end_matches('/'))),
        _ if loc.same_bucket(root) => {
            let (prefix, rp) = (loc.key_prefix()?, root.key_prefix()?);
            prefix
                .strip_prefix(rp)
                .filter(|rel| !rel.is_empty())
                .map(|rel| format!("{}/", rel.trim_end_matches('/')))
        }
        _ => None,
    }
}

async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Failure::Job(format!("{what}: {e}"))),
        Err(e) => Err(Failure::Job(format!("{what}: {e}"))),
    }
}

pub fn run(args: IngestArgs) -> Result<(), Failure> {
    let bad = Failure::BadRequest;
    let org = OrgId::parse(&args.org)?;
    let abs = crate::absolute_location;
    let source = Location::parse("--source", &abs(&args.source), &org)?;
    let dest = Location::parse("--dest", &abs(&args.dest), &org)?;
    let (root, pending) =
        parent(&source).map_err(|e| bad(format!("invalid --source {source}: {e}")))?;
    let processed_loc = match &args.processed {
        Some(p) => Location::parse("--processed", &abs(p), &org)?,
        None => root.join("processed"),
    };
    let processed = below(&processed_loc, &root).ok_or_else(|| {
        bad(format!(
            "invalid --processed {processed_loc}: it must be in {root}, beside the pending \
             prefix (objects move by server-side copies within one store)"
        ))
    })?;
    if processed.starts_with(&pending) || pending.starts_with(&processed) {
        return Err(bad(format!(
            "invalid --processed {processed_loc}: it must not hold or be inside the pending \
             prefix {source}"
        )));
    }
    if below(&dest, &source).is_some() || dest == source {
        return Err(bad(format!(
            "invalid --dest {dest}: it is inside the pending prefix"
        )));
    }
    let dedup = match args.dedup.as_deref().map(str::trim) {
        None | Some("") => None,
        Some("event_id") => Some(vec!["event_id".to_string()]),
        Some("event_id,timestamp") => Some(vec!["event_id".into(), "timestamp".into()]),
        Some(other) => {
            return Err(bad(format!(
                "invalid --dedup {other:?}: event_id or event_id,timestamp"
            )));
        }
    };
    let flows = match &args.flows {
        None => None,
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| bad(format!("invalid --flows: cannot read {}: {e}", p.display())))?,
        ),
    };
    let request = JobRequest {
        source: source.to_string(),
        org: args.org.clone(),
        start: "1970-01-01".into(),
        end: "1970-01-01".into(),
        dest: dest.join(STAGING.trim_end_matches('/')).to_string(),
        failed_output: Some(match &args.failed_output {
            Some(f) => abs(f),
            None => dest.join("_failed").to_string(),
        }),
        unrecoverable_output: Some(dest.join("_unrecoverable").to_string()),
        max_event_bytes: args.max_event_bytes,
        flows,
        partition_by: Some(args.partition_by.clone()),
        ingest: true,
        s3: args.s3.options(),
        ..JobRequest::default()
    };
    if let Some(addr) = &args.coordinator {
        if args.watch {
            return Err(bad(
                "--watch runs in one process: leave it out with --coordinator (submit a batch \
                 when objects have landed)"
                    .into(),
            ));
        }
        let mut request = request;
        request.ingest_to = Some(rewind_common::request::IngestTarget {
            trusted: dest.to_string(),
            landing: root.to_string(),
            pending: pending.clone(),
            processed: processed.clone(),
            dedup: args.dedup.clone().filter(|d| !d.trim().is_empty()),
        });
        request.priority = args.priority.clone();
        request.validate(JobId::generate())?;
        let remote = crate::Remote::to(addr, &args.reach, args.json);
        return crate::client::submit_request(&remote, request, true);
    }
    // Checked once, before anything is touched.
    request.validate(JobId::generate())?;
    let (workers, runtime) = crate::embedded::job_runtime(args.workers, 8)?;
    runtime.block_on(async move {
        let s3 = request.s3.clone();
        let dest_store = rewind_s3::open_output(&dest, &s3, JobSide::Dest)
            .await
            .map_err(|e| Failure::Job(format!("opening {dest}: {e}")))?;
        let staging_loc = dest.join(STAGING.trim_end_matches('/'));
        let staging = rewind_s3::open_output(&staging_loc, &s3, JobSide::Dest)
            .await
            .map_err(|e| Failure::Job(format!("opening {staging_loc}: {e}")))?;
        let landing = rewind_s3::open_output(&root, &s3, JobSide::Source)
            .await
            .map_err(|e| Failure::Job(format!("opening {root}: {e}")))?;
        let ctx = Ctx {
            zones: Zones {
                pending_url: source.to_string(),
                processed_url: processed_loc.to_string(),
                dedup,
                dest: dest_store,
                staging,
                landing,
                pending,
                processed,
            },
            args,
            request,
            workers,
        };
        // One ingest at a time per trusted zone: two would take the same pending objects.
        let lock = Lock::take(&ctx.zones.dest).await?;
        let r = run_batches(&ctx).await;
        lock.release().await;
        r
    })
}

/// The lock an ingest holds on its trusted zone (`_rewind/ingest/lock`, created only if absent).
/// A lock left by a process of this host that is gone is taken over; another is reported.
struct Lock {
    store: Arc<dyn OutputStore>,
}

const LOCK: &str = "_rewind/ingest/lock";

impl Lock {
    async fn take(store: &Arc<dyn OutputStore>) -> Result<Lock, Failure> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let me = json!({"pid": std::process::id(), "host": host,
            "since": chrono::Utc::now().to_rfc3339()});
        let body = me.to_string().into_bytes();
        for _ in 0..2 {
            let (s, b) = (store.clone(), body.clone());
            if blocking("taking the ingest lock", move || s.put_if_absent(LOCK, &b)).await? {
                return Ok(Lock {
                    store: store.clone(),
                });
            }
            let s = store.clone();
            let held = blocking("reading the ingest lock", move || s.get(LOCK)).await?;
            let held: serde_json::Value = held
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let pid = held["pid"].as_u64().unwrap_or(0);
            let gone = held["host"].as_str() == Some(host.as_str())
                && pid != 0
                && !std::path::Path::new(&format!("/proc/{pid}")).exists();
            if !gone {
                return Err(Failure::BadRequest(format!(
                    "another ingest into this trusted zone is running (pid {pid} on {} since \
                     {}): one at a time, or both would take the same objects; if it is gone, \
                     delete {LOCK} in the trusted zone",
                    held["host"].as_str().unwrap_or("?"),
                    held["since"].as_str().unwrap_or("?")
                )));
            }
            // Its process is gone (killed): what it left open is finished by this run.
            let s = store.clone();
            blocking("taking over the ingest lock", move || s.delete(LOCK)).await?;
        }
        Err(Failure::Job("could not take the ingest lock".into()))
    }

    async fn release(self) {
        let s = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || s.delete(LOCK)).await;
    }
}

async fn run_batches(ctx: &Ctx) -> Result<(), Failure> {
    {
        if !ctx.args.watch {
            return batch(ctx).await.map(drop);
        }
        // Ctrl-C or SIGTERM lets the batch under way finish (published, recorded, moved),
        // then stops.
        let stop = std::sync::Arc::new(tokio::sync::Notify::new());
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (stop, stopping) = (stop.clone(), stopping.clone());
            tokio::spawn(async move {
                rewind_cli::shutdown_signal().await;
                eprintln!("stopping: the batch under way finishes first");
                stopping.store(true, std::sync::atomic::Ordering::SeqCst);
                stop.notify_one();
            });
        }
        loop {
            match batch(ctx).await {
                Ok(_) => {}
                // A failed batch is reported; its objects stay pending for the next look.
                Err(e) => eprintln!("error: {}", crate::replay::failure_text(&e)),
            }
            if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return Ok(());
            }
            tokio::select! {
                _ = stop.notified() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(ctx.args.interval.max(1))) => {}
            }
        }
    }
}

/// Finishes open batches, then ingests what is pending now as one batch. Whether a batch ran.
async fn batch(ctx: &Ctx) -> Result<bool, Failure> {
    let store = ctx.zones.dest.clone();
    let open = blocking("listing open ingests", move || store.list(OPEN)).await?;
    for m in open {
        let store = ctx.zones.dest.clone();
        let key = m.key.clone();
        let Some(body) = blocking("reading an open ingest", move || store.get(&key)).await? else {
            continue;
        };
        let marker: Marker =
            serde_json::from_slice(&body).map_err(|e| Failure::Job(format!("{}: {e}", m.key)))?;
        let store = ctx.zones.dest.clone();
        let success = format!("{}_SUCCESS", execution(&marker.job));
        if blocking("reading a staged job", move || store.head(&success))
            .await?
            .is_some()
        {
            eprintln!(
                "finishing ingest {} left open by an earlier run",
                marker.job
            );
            finish(&ctx.zones, &marker).await?;
        } else {
            eprintln!(
                "dropping ingest {} left open before its job committed: its objects are \
                 still pending",
                marker.job
            );
            abandon(&ctx.zones, &marker.job).await?;
        }
    }
    // Anything to do?
    let landing = ctx.zones.landing.clone();
    let pending = ctx.zones.pending.clone();
    let listed = blocking("listing the landing zone", move || landing.list(&pending)).await?;
    let waiting = listed
        .iter()
        .filter(|o| {
            !o.key[ctx.zones.pending.len()..]
                .split('/')
                .any(|s| s.starts_with(['_', '.']))
        })
        .count();
    if waiting == 0 {
        if ctx.args.json {
            println!("{}", json!({"state": "nothing_pending"}));
        } else {
            eprintln!("nothing pending in {}", ctx.zones.pending_url);
        }
        return Ok(false);
    }
    let job = JobId::generate();
    let marker = Marker {
        job: job.to_string(),
        run_date: run_date_of(job.as_str()),
    };
    let body = serde_json::to_vec(&marker).unwrap_or_default();
    let (store, key) = (ctx.zones.dest.clone(), format!("{OPEN}{job}.json"));
    blocking("opening the ingest", move || store.put(&key, &body)).await?;
    step_done();
    let summary = match crate::embedded::execute_as(
        ctx.request.clone(),
        ctx.workers,
        !ctx.args.json,
        Some(job.clone()),
        !ctx.args.watch,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            // Nothing of it was published: its objects stay pending.
            abandon(&ctx.zones, marker.job.as_str()).await?;
            return Err(e);
        }
    };
    step_done();
    if summary.state != JobPhase::Succeeded {
        abandon(&ctx.zones, &marker.job).await?;
        return Err(Failure::Job(format!(
            "ingest {job} {}: {} of {} shards failed; nothing was published and every object \
             is still pending",
            summary.state, summary.shards_failed, summary.shards
        )));
    }
    let done = finish(&ctx.zones, &marker).await?;
    let report = json!({
        "job_id": marker.job,
        "state": "succeeded",
        "objects": summary.objects,
        "bytes": summary.bytes,
        "recovered": summary.recovered,
        "filtered": summary.filtered,
        "failed": summary.failed,
        "failed_by_reason": summary.failed_by_reason,
        "duplicates": done.duplicates,
        "published": done.rows,
        "files": done.files,
        "consumed": done.consumed,
        "processed": format!("{}date={}/", ctx.zones.processed_url.trim_end_matches('/').to_string() + "/", marker.run_date),
        "change": done.change,
        "failed_output": summary.failed_output,
    });
    if ctx.args.json {
        println!("{report}");
    } else {
        println!(
            "ingest {}: {} objects, {} events published in {} files ({} duplicates dropped, {} \
             failed records); change {}; objects moved to {}",
            marker.job,
            done.consumed,
            done.rows,
            done.files,
            done.duplicates,
            summary.failed,
            done.change,
            report["processed"].as_str().unwrap_or_default()
        );
    }
    Ok(true)
}

pub struct Done {
    files: usize,
    rows: u64,
    duplicates: u64,
    consumed: usize,
    change: String,
}

/// Publish, record, move, close: every step idempotent.
async fn finish(z: &Zones, marker: &Marker) -> Result<Done, Failure> {
    let job = marker.job.clone();
    let exec = execution(&job);
    let store = z.dest.clone();
    let key = format!("{exec}_manifest.json");
    let manifest: JobManifest = {
        let body = blocking("reading the staged manifest", move || store.get(&key))
            .await?
            .ok_or_else(|| Failure::Job(format!("ingest {job}: its manifest is gone")))?;
        serde_json::from_slice(&body).map_err(|e| Failure::Job(format!("{exec}: {e}")))?
    };
    let done = publish_record_move(z, &job, &marker.run_date, &manifest).await?;
    // 6. close
    close(z, &job).await?;
    Ok(done)
}

/// The day a batch ran, from its job id (`YYYYMMDD-…`): where its objects go in `processed/`.
pub fn run_date_of(job: &str) -> String {
    let d = job.get(..8).unwrap_or("19700101");
    format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..8])
}

/// Steps 3 to 5 of a committed batch (publish, record, move), each idempotent; `manifest` is its
/// job's. What a coordinator runs at a distributed ingest's commit, too.
pub async fn publish_record_move(
    z: &Zones,
    job: &str,
    run_date: &str,
    manifest: &JobManifest,
) -> Result<Done, Failure> {
    let job = job.to_string();
    let exec = execution(&job);
    // 3. publish
    let moves: Vec<rewind_worker::ingest::Move> = manifest
        .files
        .iter()
        .map(|f| {
            let rest = f
                .key
                .strip_prefix(&format!("execution_id={job}/"))
                .unwrap_or(&f.key);
            let (dir, name) = rest.rsplit_once('/').unwrap_or(("", rest));
            let name = name.strip_prefix("part-").unwrap_or(name);
            rewind_worker::ingest::Move {
                rows: f.rows,
                staged: format!("{STAGING}{}", f.key),
                to: if dir.is_empty() {
                    format!("part-{job}-{name}")
                } else {
                    format!("{dir}/part-{job}-{name}")
                },
            }
        })
        .collect();
    let (store, dedup, own) = (z.dest.clone(), z.dedup.clone(), format!("part-{job}-"));
    let published = tokio::task::spawn_blocking(move || {
        rewind_worker::ingest::publish(&store, &moves, dedup.as_deref(), &own)
    })
    .await
    .map_err(|e| Failure::Job(e.to_string()))?
    .map_err(|e| Failure::Job(format!("publishing ingest {job}: {e}")))?;
    step_done();
    // What the job read: every object of its plans.
    let store = z.dest.clone();
    let plans_prefix = format!("{exec}_rewind/plan/");
    let consumed: Vec<ObjectMeta> = blocking("reading the staged plans", move || {
        let mut out = Vec::new();
        for p in store.list(&plans_prefix)? {
            let Some(body) = store.get(&p.key)? else {
                continue;
            };
            let plan: ShardPlan =
                serde_json::from_slice(&body).map_err(|e| StorageError::Unavailable {
                    what: p.key.clone(),
                    why: e.to_string(),
                })?;
            out.extend(plan.objects);
        }
        Ok(out)
    })
    .await?;
    // 4. record
    let processed_at = format!("{}date={}/", z.processed, run_date);
    let effect = IngestEffect {
        pending: z.pending_url.clone(),
        processed: format!(
            "{}/date={}/",
            z.processed_url.trim_end_matches('/'),
            run_date
        ),
        consumed: consumed.clone(),
    };
    let (store, files) = (z.dest.clone(), published.files.clone());
    let (spec, counts) = (
        serde_json::to_value(&manifest.spec).ok(),
        Some(manifest.counts.clone()),
    );
    let job2 = job.clone();
    let change = tokio::task::spawn_blocking(move || {
        rewind_common::change::record_ingest(store.as_ref(), &job2, &files, effect, spec, counts)
    })
    .await
    .map_err(|e| Failure::Job(e.to_string()))?
    .map_err(|e| Failure::Job(format!("recording ingest {job}: {e}")))?;
    step_done();
    // 5. move: copies first, then the deletes in batches.
    let (landing, pending) = (z.landing.clone(), z.pending.clone());
    blocking("moving the consumed objects", move || {
        let mut delete = Vec::new();
        for (i, o) in consumed.iter().enumerate() {
            let src = format!("{pending}{}", o.key);
            let dst = format!("{processed_at}{}", o.key);
            match landing.head(&src)? {
                // Still the object the job read: copied (again, if need be), then deleted.
                Some(now) if same(&now, o) => {
                    if landing.head(&dst)?.is_none_or(|d| d.size != now.size) {
                        landing.copy(&src, &dst)?;
                    }
                    delete.push(src);
                }
                // Replaced since (a new drop under the same name): it stays for the next batch.
                Some(_) => {}
                // Moved already.
                None => {}
            }
            if i % 64 == 63 {
                step_done();
            }
        }
        landing.delete_many(&delete)
    })
    .await?;
    step_done();
    Ok(Done {
        files: published.files.len(),
        rows: published.files.iter().map(|f| f.rows).sum(),
        duplicates: published.duplicates,
        consumed: manifest.counts.objects as usize,
        change: change.id,
    })
}

/// Whether `now` is still the object `then` was (its tag and size; the size alone when the
/// store lists no tags).
fn same(now: &ObjectMeta, then: &ObjectMeta) -> bool {
    now.size == then.size
        && match (&now.etag, &then.etag) {
            (Some(a), Some(b)) => a.trim_matches('"') == b.trim_matches('"'),
            _ => true,
        }
}

/// Removes what an ingest staged and its marker.
async fn close(z: &Zones, job: &str) -> Result<(), Failure> {
    let (store, staging, exec, marker) = (
        z.dest.clone(),
        z.staging.clone(),
        execution(job),
        format!("{OPEN}{job}.json"),
    );
    let job = job.to_string();
    blocking("closing the ingest", move || {
        let keys: Vec<String> = store.list(&exec)?.into_iter().map(|o| o.key).collect();
        store.delete_many(&keys)?;
        // The staging store's own record of the job (its log sits below the staging prefix).
        let _ = rewind_common::change::forget_job(staging.as_ref(), &job);
        store.delete(&marker)
    })
    .await
}

/// Drops a batch whose job did not commit: what it staged and failed, and its marker. Its
/// objects were never moved: they are ingested by the next batch.
async fn abandon(z: &Zones, job: &str) -> Result<(), Failure> {
    let store = z.dest.clone();
    let failed = format!("_failed/execution_id={job}/");
    blocking("dropping the ingest's failed records", move || {
        let keys: Vec<String> = store.list(&failed)?.into_iter().map(|o| o.key).collect();
        store.delete_many(&keys)
    })
    .await?;
    close(z, job).await
}
