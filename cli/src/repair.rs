//! `rewind repair`: keyed repair of a Parquet dataset, one recorded (reversible) change.

use std::path::PathBuf;

use clap::Args;
use rewind_worker::repair::{self, RepairError, Request};

use crate::changes::{DestArgs, open_store};
use crate::{Failure, S3Args};

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// The dataset: a directory, s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX] or az://CONTAINER[/PREFIX] of Parquet files (any Hive layout,
    /// written by Rewind or not).
    #[arg(long)]
    pub dataset: String,
    /// The column that identifies a row (string or integer).
    #[arg(long)]
    pub key: String,
    /// Keys whose rows are deleted: a text file (one key a line), or a .parquet / .csv file with
    /// the key column.
    #[arg(long)]
    pub delete: Option<PathBuf>,
    /// Rows that replace the rows with the same key: .parquet or JSON lines with the dataset's
    /// columns (and its partition columns, for --upsert).
    #[arg(long)]
    pub update: Option<PathBuf>,
    /// Insert the --update rows whose key is not in the dataset (else they are reported).
    #[arg(long)]
    pub upsert: bool,
    /// Say which files and rows would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Spread the file rewrites over the workers of this coordinator (its gRPC address), as
    /// the shards of one job; the rows must then be JSON lines. Waits for the job.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// With --coordinator: how the job shares the fleet's worker slots with other jobs:
    /// interactive (8 shares), normal (4) or backfill (1) (docs/scheduling.md).
    #[arg(long, requires = "coordinator", value_parser = ["interactive", "normal", "backfill"])]
    pub priority: Option<String>,
    #[command(flatten)]
    pub reach: crate::CoordinatorAuth,
    /// What the dataset must be: parquet (files rewritten in place, kept for a rollback) or
    /// delta (a Delta table: rewrites are new files, one commit of its log). Found out from
    /// the dataset when not given.
    #[arg(long, value_parser = ["parquet", "delta"])]
    pub table_format: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

fn failure(e: RepairError) -> Failure {
    match e {
        RepairError::Input(m) => Failure::BadRequest(m),
        RepairError::Change(rewind_common::change::ChangeError::Conflict(m))
        | RepairError::Change(rewind_common::change::ChangeError::Refused(m)) => {
            Failure::BadRequest(m)
        }
        other => Failure::Job(other.to_string()),
    }
}

pub fn run(args: RepairArgs) -> Result<(), Failure> {
    if args.delete.is_none() && args.update.is_none() {
        return Err(Failure::BadRequest(
            "nothing to do: give --delete KEYS and/or --update ROWS".into(),
        ));
    }
    if args.upsert && args.update.is_none() {
        return Err(Failure::BadRequest("--upsert needs --update ROWS".into()));
    }
    if args.coordinator.is_some() {
        return distributed(args);
    }
    let place = DestArgs {
        dest: args.dataset.clone(),
        json: args.json,
        s3: args.s3,
    };
    let opened = open_store(&place, "--dataset")?;
    let store = opened.store.clone();
    match (args.table_format.as_deref(), store.table().is_some()) {
        (Some("delta"), false) => {
            return Err(Failure::BadRequest(format!(
                "invalid --table-format: {} holds no Delta table (no _delta_log/)",
                args.dataset
            )));
        }
        (Some("parquet"), true) => {
            return Err(Failure::BadRequest(format!(
                "invalid --table-format: {} is a Delta table; rewriting its files in place \
                 would break its log (give --table-format delta, or leave it out)",
                args.dataset
            )));
        }
        _ => {}
    }
    let (schema, key_type, partitions) =
        repair::dataset_schema(&store, &args.key).map_err(failure)?;
    let delete = match &args.delete {
        Some(p) => repair::read_keys(p, &args.key, key_type).map_err(failure)?,
        None => Default::default(),
    };
    let update = match &args.update {
        Some(p) => Some(repair::read_rows(p, &schema, &args.key, &partitions).map_err(failure)?),
        None => None,
    };
    let spec = serde_json::json!({
        "dataset": args.dataset,
        "key": args.key,
        "delete": args.delete.as_ref().map(|p| p.display().to_string()),
        "update": args.update.as_ref().map(|p| p.display().to_string()),
        "upsert": args.upsert,
        "delete_keys": delete.len(),
        "update_rows": update.as_ref().map_or(0, |u| u.keys.len()),
    });
    let req = Request {
        key: args.key.clone(),
        delete,
        update,
        upsert: args.upsert,
        dry_run: args.dry_run,
        who: None,
        spec: Some(spec),
    };
    let report = repair::repair(&store, &req).map_err(failure)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    let verb = if report.dry_run {
        "would change"
    } else {
        "changed"
    };
    println!(
        "{verb} {} of {} files ({} read): {} rows deleted, {} updated, {} inserted",
        report.files.len(),
        report.files_in_dataset,
        report.files_read,
        report.rows_deleted,
        report.rows_updated,
        report.rows_inserted
    );
    for f in &report.files {
        println!(
            "  {}: {} -> {} rows ({} deleted, {} updated, {} inserted)",
            f.key, f.rows_before, f.rows_after, f.deleted, f.updated, f.inserted
        );
    }
    if !report.delete_keys_not_found.is_empty() {
        println!(
            "keys to delete that no row has ({}): {}",
            report.delete_keys_not_found.len(),
            sample(&report.delete_keys_not_found)
        );
    }
    if !report.update_keys_not_found.is_empty() {
        println!(
            "rows to update whose key no row has, not inserted (--upsert inserts them) ({}): {}",
            report.update_keys_not_found.len(),
            sample(&report.update_keys_not_found)
        );
    }
    match &report.change {
        Some(c) => println!(
            "recorded as change {c} (rewind rollback --dest {} {c})",
            args.dataset
        ),
        None if !report.dry_run => println!("nothing changed"),
        None => {}
    }
    Ok(())
}

fn sample(keys: &[String]) -> String {
    let mut s = keys.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > 10 {
        s.push_str(", …");
    }
    s
}

/// `rewind repair --coordinator`: one job whose shards are the dataset's files, run by the
/// coordinator's workers; its commit applies every rewrite as one change.
fn distributed(args: RepairArgs) -> Result<(), Failure> {
    let bad = Failure::BadRequest;
    if args.upsert || args.dry_run {
        return Err(bad(
            "--upsert and --dry-run run in one process: leave out --coordinator".into(),
        ));
    }
    if args.table_format.is_some() {
        return Err(bad(
            "--table-format: a distributed repair finds the table by its log; leave it out".into(),
        ));
    }
    let delete = match &args.delete {
        Some(p) => repair::read_keys(p, &args.key, repair::KeyType::Str)
            .map_err(failure)?
            .into_iter()
            .map(|k| k.to_string())
            .collect(),
        None => Vec::new(),
    };
    let rows = match &args.update {
        Some(p) if p.extension().is_some_and(|e| e == "parquet") => {
            return Err(bad(format!(
                "invalid --update {}: with --coordinator, give the rows as JSON lines",
                p.display()
            )));
        }
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| bad(format!("invalid --update {}: {e}", p.display())))?,
        ),
        None => None,
    };
    // A local dataset as an absolute path (the coordinator's processes need one).
    let dataset = crate::absolute_location(&args.dataset);
    let request = rewind_common::JobRequest {
        source: dataset.clone(),
        dest: dataset,
        org: "repair".into(),
        start: "1970-01-01".into(),
        end: "1970-01-01".into(),
        s3: args.s3.options(),
        repair: Some(rewind_common::request::RepairRequest {
            key: args.key.clone(),
            delete,
            rows,
        }),
        priority: args.priority.clone(),
        ..Default::default()
    };
    let remote = crate::Remote::to(
        args.coordinator.as_deref().unwrap_or_default(),
        &args.reach,
        args.json,
    );
    crate::client::submit_request(&remote, request, true)
}
