//! The `rewind` command line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod embedded;
mod generate;

#[derive(Debug, Parser)]
#[command(
    name = "rewind",
    version,
    about = "Recover and replay event data from object-storage archives"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Recover a date range of an archive into Hive-partitioned Parquet, in one process.
    Run(RunArgs),
    /// Write a deterministic, realistic sample archive.
    Gen(GenArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory holding the archive (laid out as --layout describes).
    #[arg(long)]
    pub source: PathBuf,
    /// Tenant (organisation) id.
    #[arg(long)]
    pub org: String,
    /// First hour to recover, inclusive, UTC: YYYY-MM-DD (the whole day) or YYYY-MM-DDTHH.
    #[arg(long)]
    pub start: String,
    /// Last hour to recover, inclusive, UTC: YYYY-MM-DD (the whole day) or YYYY-MM-DDTHH.
    #[arg(long)]
    pub end: String,
    /// Directory to write Parquet under (execution_id=<job>/org_id=<org>/date=<day>/).
    #[arg(long)]
    pub dest: PathBuf,
    /// Where an hour's objects live below --source.
    #[arg(long, default_value = rewind_common::layout::DEFAULT_LAYOUT)]
    pub layout: String,
    /// Keep only events whose arrival_epoch falls inside the requested range.
    #[arg(long)]
    pub arrival_filter: bool,
    /// Shards processed in parallel (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Where failed records go (default: <dest>/_failed).
    #[arg(long)]
    pub failed_output: Option<PathBuf>,
    /// Largest event accepted, in bytes; larger ones are failed records.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_event_bytes: usize,
    /// Longest range accepted, in hours.
    #[arg(long, default_value_t = rewind_common::range::DEFAULT_MAX_HOURS)]
    pub max_range_hours: u64,
    /// Attempts per shard before the shard (and the job) fails.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// Print exactly one JSON object (the summary) on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    /// Directory to write the archive into.
    #[arg(long)]
    pub out: PathBuf,
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
    #[arg(long)]
    pub json: bool,
}

/// Exit codes: 0 done, 1 the job failed, 2 a bad request.
pub enum Failure {
    BadRequest(String),
    Job(String),
}

impl From<rewind_common::RequestError> for Failure {
    fn from(e: rewind_common::RequestError) -> Self {
        Failure::BadRequest(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_logs = !std::io::stderr().is_terminal();
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        builder.json().init();
    } else {
        builder.init();
    }
    let result = match cli.command {
        Command::Run(args) => embedded::run(args),
        Command::Gen(args) => generate::run(args),
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
    }
}
