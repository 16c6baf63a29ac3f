//! Object storage behind Rewind's storage traits, chosen by location: a local directory or S3
//! (any S3-compatible store) through `aws-sdk-s3`.
//!
//! The traits are synchronous (the pipeline is CPU-bound and runs on blocking threads); the S3
//! stores run their requests on the tokio runtime they were opened in and wait for the answer on
//! the calling thread, so they must be called from blocking threads, never from async tasks.
//! Object bodies stream through a bounded channel from a download task; opening objects ahead
//! is how a shard keeps several GETs in flight.

mod azure;
mod client;
mod gcs;
pub mod kinesis;
mod output;
pub mod pubsub;
mod retry;
mod source;

use std::sync::Arc;

use rewind_common::location::{JobSide, Location, S3Options};
use rewind_common::storage::{LocalOutput, LocalSource, ObjectSource, OutputStore, StorageError};

pub use azure::AzureStore;
pub use client::{S3Client, connect, connect_static};
pub use gcs::GcsStore;
pub use object_store::azure::MicrosoftAzureBuilder;
pub use output::S3Output;
pub use retry::RetryPolicy;
pub use source::S3Source;

/// Opens the archive at `location`.
pub async fn open_source(
    location: &Location,
    options: &S3Options,
) -> Result<Arc<dyn ObjectSource>, StorageError> {
    match location {
        Location::Local(dir) => {
            let src = LocalSource::new(dir)
                .map_err(|e| StorageError::io(dir.display().to_string(), e))?;
            Ok(Arc::new(src))
        }
        Location::S3 { bucket, prefix } => {
            let client = connect(options, JobSide::Source).await?;
            Ok(Arc::new(
                S3Source::open(client, bucket, prefix, options.read_ahead()).await?,
            ))
        }
        Location::Azure { container, prefix } => Ok(Arc::new(
            AzureStore::open(container, prefix, options.part_size(), options.read_ahead()).await?,
        )),
        Location::Gcs { bucket, prefix } => Ok(Arc::new(
            GcsStore::open(bucket, prefix, options.part_size(), options.read_ahead()).await?,
        )),
    }
}

/// Opens an output location (`side` says whose role to assume).
pub async fn open_output(
    location: &Location,
    options: &S3Options,
    side: JobSide,
) -> Result<Arc<dyn OutputStore>, StorageError> {
    match location {
        Location::Local(dir) => Ok(Arc::new(LocalOutput::new(dir))),
        Location::S3 { bucket, prefix } => {
            let client = connect(options, side).await?;
            Ok(Arc::new(S3Output::new(
                client,
                bucket,
                prefix,
                options.part_size(),
            )))
        }
        Location::Azure { container, prefix } => Ok(Arc::new(
            AzureStore::open(container, prefix, options.part_size(), options.read_ahead()).await?,
        )),
        Location::Gcs { bucket, prefix } => Ok(Arc::new(
            GcsStore::open(bucket, prefix, options.part_size(), options.read_ahead()).await?,
        )),
    }
}

/// The output stores of a job: Parquet (and control files), failed records, unrecoverable
/// events.
#[derive(Clone)]
pub struct JobOutputs {
    pub dest: Arc<dyn OutputStore>,
    pub failed: Arc<dyn OutputStore>,
    pub unrecoverable: Arc<dyn OutputStore>,
}

impl JobOutputs {
    /// The stores of records beside the Parquet output.
    pub fn sides(&self) -> [&dyn OutputStore; 2] {
        [self.failed.as_ref(), self.unrecoverable.as_ref()]
    }
}

/// Opens the job's outputs; on failure, which one ("destination", "failed output",
/// "unrecoverable output") and why.
pub async fn open_outputs(
    places: &rewind_common::request::JobLocations,
    options: &S3Options,
) -> Result<JobOutputs, (&'static str, StorageError)> {
    let open = |what: &'static str, location| async move {
        open_output(location, options, JobSide::Dest)
            .await
            .map_err(|e| (what, e))
    };
    Ok(JobOutputs {
        dest: open("destination", &places.dest).await?,
        failed: open("failed output", &places.failed).await?,
        unrecoverable: open("unrecoverable output", &places.unrecoverable).await?,
    })
}
