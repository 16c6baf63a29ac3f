//! `rewind changes`, `rewind rollback`, `rewind reapply`: the change log of a destination, read
//! and acted on in this process (no coordinator involved: the log lives in the destination).

use std::sync::Arc;

use clap::{Args, Subcommand};
use rewind_common::change::{self, ChangeError, Content, Done, Listed, Log};
use rewind_common::location::JobSide;
use rewind_common::storage::OutputStore;
use rewind_common::{Location, OrgId};

use crate::{Failure, S3Args};

/// A destination and how to reach it.
#[derive(Debug, Args)]
pub struct DestArgs {
    /// The destination: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX], as given to the jobs.
    #[arg(long)]
    pub dest: String,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ChangesArgs {
    #[command(subcommand)]
    pub action: Option<ChangesAction>,
    /// The destination: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX], as given to the jobs.
    #[arg(long)]
    pub dest: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

#[derive(Debug, Subcommand)]
pub enum ChangesAction {
    /// One change: every object it added, replaced or removed, with sizes, rows and versions.
    Show {
        /// The change id (from `rewind changes`).
        change: String,
        #[command(flatten)]
        place: DestArgs,
    },
    /// Drop what changes older than --older-than keep to be rolled back (kept copies, old
    /// versions); says which changes that makes permanent.
    Expire {
        /// Age: a number and s, m, h or d (30d).
        #[arg(long)]
        older_than: String,
        #[command(flatten)]
        place: DestArgs,
    },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The change to undo (default: the newest applied change).
    #[arg(conflicts_with = "to")]
    pub change: Option<String>,
    /// Undo every applied change after this one, newest first.
    #[arg(long)]
    pub to: Option<String>,
    /// Say what would be undone, object by object; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub place: DestArgs,
}

#[derive(Debug, Args)]
pub struct ReapplyArgs {
    /// The rolled-back change to apply again.
    pub change: String,
    /// Say what would be applied again, object by object; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub place: DestArgs,
}

/// An open destination, with the runtime its S3 client runs on.
pub struct Opened {
    pub store: Arc<dyn OutputStore>,
    _runtime: Option<tokio::runtime::Runtime>,
}

fn open(place: &DestArgs) -> Result<Opened, Failure> {
    open_store(place, "--dest")
}

/// Opens a destination or dataset given as `flag`; a Delta table's changes go through its log.
pub fn open_store(place: &DestArgs, flag: &'static str) -> Result<Opened, Failure> {
    let mut opened = open_plain(place, flag)?;
    opened.store = rewind_delta::open(opened.store.clone())
        .map_err(|e| Failure::Job(format!("opening {}: {e}", place.dest)))?;
    Ok(opened)
}

/// Opens a destination as a plain store (no table detection).
pub fn open_plain_store(place: &DestArgs, flag: &'static str) -> Result<Opened, Failure> {
    open_plain(place, flag)
}

fn open_plain(place: &DestArgs, flag: &'static str) -> Result<Opened, Failure> {
    if place.dest.contains("{org}") {
        return Err(Failure::BadRequest(format!(
            "invalid {flag}: give the location itself, without {{org}}"
        )));
    }
    let org = OrgId::parse("any").map_err(|e| Failure::Job(e.to_string()))?;
    let location = Location::parse(flag, &place.dest, &org)?;
    match &location {
        Location::Local(dir) => {
            if !dir.is_dir() {
                return Err(Failure::BadRequest(format!(
                    "invalid {flag}: {} is not a directory",
                    dir.display()
                )));
            }
            Ok(Opened {
                store: Arc::new(rewind_common::storage::LocalOutput::new(dir)),
                _runtime: None,
            })
        }
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
            let store = runtime
                .block_on(rewind_s3::open_output(
                    &location,
                    &place.s3.options(),
                    JobSide::Dest,
                ))
                .map_err(|e| Failure::Job(format!("opening {location}: {e}")))?;
            Ok(Opened {
                store,
                _runtime: Some(runtime),
            })
        }
    }
}

fn failure(e: ChangeError) -> Failure {
    match e {
        ChangeError::Storage(_) | ChangeError::Unreadable { .. } => Failure::Job(e.to_string()),
        ChangeError::NotFound(_) | ChangeError::Refused(_) | ChangeError::Conflict(_) => {
            Failure::BadRequest(e.to_string())
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

/// `rewind changes [show|expire]`.
pub fn changes(args: ChangesArgs) -> Result<(), Failure> {
    match args.action {
        None => {
            let dest = args
                .dest
                .ok_or_else(|| Failure::BadRequest("--dest is required".into()))?;
            list(&DestArgs {
                dest,
                json: args.json,
                s3: args.s3,
            })
        }
        Some(ChangesAction::Show { change, place }) => show(&place, &change),
        Some(ChangesAction::Expire { older_than, place }) => expire(&place, &older_than),
    }
}

fn list(place: &DestArgs) -> Result<(), Failure> {
    let opened = open(place)?;
    let listed = Log::new(opened.store.as_ref()).list().map_err(failure)?;
    if place.json {
        print_json(&listed);
        return Ok(());
    }
    if listed.is_empty() {
        println!("no changes recorded in {}", place.dest);
        return Ok(());
    }
    println!(
        "{:<27} {:<8} {:<11} {:>7}  {:<30} REVERSIBLE",
        "CHANGE", "KIND", "STATE", "OBJECTS", "JOB / ABOUT"
    );
    for l in &listed {
        let c = &l.change;
        let about = c
            .job
            .clone()
            .or_else(|| c.target.clone())
            .unwrap_or_default();
        let state = match l.state {
            change::ChangeState::Applied => "applied",
            change::ChangeState::RolledBack => "rolled back",
        };
        let reversible = if l.reversible {
            "yes".to_string()
        } else {
            format!("no: {}", l.why_not.as_deref().unwrap_or("-"))
        };
        println!(
            "{:<27} {:<8} {:<11} {:>7}  {:<30} {reversible}",
            c.id,
            c.kind.to_string(),
            state,
            c.touched(),
            about
        );
    }
    Ok(())
}

fn show(place: &DestArgs, id: &str) -> Result<(), Failure> {
    let opened = open(place)?;
    let listed = Log::new(opened.store.as_ref()).list().map_err(failure)?;
    let l: &Listed = listed
        .iter()
        .find(|l| l.change.id == id)
        .ok_or_else(|| failure(ChangeError::NotFound(id.to_string())))?;
    if place.json {
        print_json(l);
        return Ok(());
    }
    let c = &l.change;
    println!("change   {}", c.id);
    println!("kind     {}", c.kind);
    println!("state    {:?}", l.state);
    if let Some(job) = &c.job {
        println!("job      {job}");
    }
    if let Some(t) = &c.target {
        println!("about    {t}");
    }
    if let Some(who) = &c.who {
        println!("by       {who}");
    }
    if let Some(k) = &c.kafka {
        println!("kafka    {} records into {}", k.records, k.topic);
        for (p, r) in &k.partitions {
            println!("           partition {p}: offsets {}..={}", r.first, r.last);
        }
        if !k.ranges_complete {
            println!(
                "           (a shard resumed after an earlier attempt: its ranges miss that attempt's records)"
            );
        }
    }
    match (&l.reversible, &l.why_not) {
        (true, _) => println!("reversible"),
        (false, why) => println!("not reversible: {}", why.as_deref().unwrap_or("-")),
    }
    table_lines(c);
    for t in &c.objects {
        println!("{}", object_line(t));
    }
    Ok(())
}

/// A change's commit of a table's log: the version and the files it added and removed.
fn table_lines(c: &change::Change) {
    let Some(t) = &c.table else { return };
    let version = t
        .version
        .map_or_else(|| "a commit".to_string(), |v| format!("version {v}"));
    println!("table    {} {version} (transaction {})", t.format, t.app_id);
    let file = |f: &rewind_common::table::TableFile| match f.rows {
        Some(r) => format!("{}  ({} bytes, {r} rows)", f.key, f.size),
        None => format!("{}  ({} bytes)", f.key, f.size),
    };
    for f in &t.added {
        println!("+ {}  [table]", file(f));
    }
    for f in &t.removed {
        println!("- {}  [table]", file(f));
    }
}

fn describe(c: &Content) -> String {
    match c {
        Content::Absent { .. } => "absent".into(),
        Content::Present(h) => {
            let mut s = format!("{} bytes", h.size);
            if let Some(r) = h.rows {
                s.push_str(&format!(", {r} rows"));
            }
            if let Some(v) = &h.version {
                s.push_str(&format!(", version {v}"));
            }
            if let Some(k) = &h.kept {
                s.push_str(&format!(", kept at {k}"));
            }
            s
        }
    }
}

fn object_line(t: &change::Touch) -> String {
    let mark = match (t.before.is_present(), t.after.is_present()) {
        (false, true) => '+',
        (true, false) => '-',
        (true, true) => '~',
        (false, false) => ' ',
    };
    format!(
        "{mark} {}  ({} -> {})",
        t.key,
        describe(&t.before),
        describe(&t.after)
    )
}

fn said(verb: &str, done: &Done) {
    let c = &done.change;
    let about = c.target.as_deref().unwrap_or("?");
    if c.id == "dry-run" {
        println!("would be {verb}: {about} ({} objects)", c.touched());
        table_lines(c);
        for t in &c.objects {
            println!("{}", object_line(t));
        }
        return;
    }
    if done.already {
        println!("{about} was {verb} already (change {})", c.id);
    } else {
        println!(
            "{verb} {about}: {} objects (recorded as change {})",
            c.touched(),
            c.id
        );
    }
}

/// `rewind rollback`.
pub fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let opened = open(&args.place)?;
    let store = opened.store.as_ref();
    if let Some(to) = &args.to {
        let done = if args.dry_run {
            change::preview_rollback_to(store, to)
        } else {
            change::rollback_to(store, to, None)
        }
        .map_err(failure)?;
        if args.place.json {
            print_json(&serde_json::json!({
                "rollbacks": done.rollbacks,
                "replays_kept": done.replays_kept,
            }));
            return Ok(());
        }
        if done.rollbacks.is_empty() {
            println!("nothing applied after {to}");
        }
        for r in &done.rollbacks {
            if args.dry_run {
                said(
                    "rolled back",
                    &Done {
                        change: r.clone(),
                        already: false,
                    },
                );
                continue;
            }
            println!(
                "rolled back {}: {} objects (recorded as change {})",
                r.target.as_deref().unwrap_or("?"),
                r.touched(),
                r.id
            );
        }
        for k in &done.replays_kept {
            println!("kept {k}: a Kafka replay cannot be undone in Kafka");
        }
        return Ok(());
    }
    let done = if args.dry_run {
        change::preview_rollback(store, args.change.as_deref())
    } else {
        change::rollback(store, args.change.as_deref(), None)
    }
    .map_err(failure)?;
    if args.place.json {
        print_json(&done_json(&done));
    } else {
        said("rolled back", &done);
    }
    Ok(())
}

fn done_json(done: &Done) -> serde_json::Value {
    serde_json::json!({"already": done.already, "change": done.change})
}

/// `rewind reapply`.
pub fn reapply(args: ReapplyArgs) -> Result<(), Failure> {
    let opened = open(&args.place)?;
    let done = if args.dry_run {
        change::preview_reapply(opened.store.as_ref(), &args.change)
    } else {
        change::reapply(opened.store.as_ref(), &args.change, None)
    }
    .map_err(failure)?;
    if args.place.json {
        print_json(&done_json(&done));
    } else {
        said("applied again", &done);
    }
    Ok(())
}

/// `30d`, `12h`, `90m`, `45s` in milliseconds.
fn age_ms(text: &str) -> Result<i64, Failure> {
    let bad = || {
        Failure::BadRequest(format!(
            "invalid --older-than {text:?}: a number and s, m, h or d (30d)"
        ))
    };
    let text = text.trim();
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    if n < 0 {
        return Err(bad());
    }
    n.checked_mul(unit_ms).ok_or_else(bad)
}

fn expire(place: &DestArgs, older_than: &str) -> Result<(), Failure> {
    let age = age_ms(older_than)?;
    let opened = open(place)?;
    let cutoff = rewind_common::lifecycle::now_ms() - age;
    let report = change::expire(opened.store.as_ref(), cutoff).map_err(failure)?;
    if place.json {
        print_json(&report);
        return Ok(());
    }
    println!(
        "expired {} changes, deleted {} kept objects or old versions",
        report.expired.len(),
        report.objects_deleted
    );
    if !report.now_permanent.is_empty() {
        println!(
            "now permanent (can no longer be reversed): {}",
            report.now_permanent.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_parse_with_units_and_bad_ones_are_named() {
        assert_eq!(age_ms("30d").ok(), Some(30 * 86_400_000));
        assert_eq!(age_ms("90m").ok(), Some(90 * 60_000));
        assert_eq!(age_ms("0s").ok(), Some(0));
        for bad in ["", "d", "30", "3w", "-1d", "1.5d"] {
            assert!(
                matches!(age_ms(bad), Err(Failure::BadRequest(m)) if m.contains("--older-than")),
                "{bad}"
            );
        }
    }
}
