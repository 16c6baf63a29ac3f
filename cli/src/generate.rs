//! `rewind gen`.

use rewind_common::OrgId;
use rewind_common::location::JobSide;
use rewind_common::range::HourRange;
use rewind_common::{Location, S3Options};
use rewind_gen::{Compression, GenConfig, generate, generate_with};

use crate::{Failure, GenArgs};

pub fn run(args: GenArgs) -> Result<(), Failure> {
    let org = OrgId::parse(&args.org)?;
    let range = HourRange::parse(&args.start, &args.start, u64::MAX)?;
    let compression: Compression = args
        .compression
        .parse()
        .map_err(|e| Failure::BadRequest(format!("invalid --compression: {e}")))?;
    if !(args.object_mb > 0.0 && args.object_mb <= 1024.0) {
        return Err(Failure::BadRequest(
            "invalid --object-mb: must be in (0, 1024]".into(),
        ));
    }
    if args.hours == 0 || args.objects_per_hour == 0 {
        return Err(Failure::BadRequest(
            "invalid --hours/--objects-per-hour: must be at least 1".into(),
        ));
    }
    let cfg = GenConfig {
        org: org.to_string(),
        start_epoch_hour: range.first.epoch_hours(),
        hours: args.hours,
        objects_per_hour: args.objects_per_hour,
        object_bytes: (args.object_mb * 1024.0 * 1024.0) as u64,
        seed: args.seed,
        compression,
        profile: args
            .profile
            .parse()
            .map_err(|e| Failure::BadRequest(format!("invalid --profile: {e}")))?,
    };
    let location = Location::parse("--out", &args.out, &org)?;
    let written = match &location {
        Location::Local(dir) => generate(dir, &cfg),
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
            let options = S3Options {
                region: args.region.clone(),
                endpoint_url: args.endpoint_url.clone(),
                force_path_style: args.force_path_style,
                ..S3Options::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Failure::Job(format!("starting the runtime: {e}")))?;
            let store = runtime
                .block_on(rewind_s3::open_output(&location, &options, JobSide::Dest))
                .map_err(|e| Failure::Job(format!("opening {location}: {e}")))?;
            generate_with(&cfg, |key, bytes| {
                store
                    .put(key, bytes)
                    .map(drop)
                    .map_err(|e| std::io::Error::other(e.to_string()))
            })
        }
    };
    let summary = written.map_err(|e| Failure::Job(format!("writing {location}: {e}")))?;
    if args.json {
        println!("{}", serde_json::to_string(&summary).unwrap_or_default());
    } else {
        println!(
            "wrote {} objects, {} events, {:.1} MB ({:.1} MB stored) under {}",
            summary.objects,
            summary.events,
            summary.bytes as f64 / 1e6,
            summary.stored_bytes as f64 / 1e6,
            location
        );
    }
    Ok(())
}
