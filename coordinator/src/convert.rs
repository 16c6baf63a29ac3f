//! The one place where wire types (rewind.v1) meet the domain: requests both ways, counts,
//! and the mapping of the core's errors to gRPC statuses (keeping their meaning).

use std::collections::{BTreeMap, HashMap};

use rewind_common::job::FlowCounts;
use rewind_common::location::S3Options;
use rewind_common::shard_store::{JobProgress, ShardCounts, StoreError};
use rewind_common::{JobId, JobRequest};
use rewind_proto::v1 as pb;
use tonic::Status;

use crate::core::CoreError;

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        let message = e.to_string();
        match e {
            CoreError::BadRequest(_) => Status::invalid_argument(message),
            CoreError::Precondition(_) => Status::failed_precondition(message),
            CoreError::Denied(_) => Status::permission_denied(message),
            CoreError::Aborted(_) => Status::aborted(message),
            CoreError::Unavailable(_) => Status::unavailable(message),
            CoreError::NotFound(_) => Status::not_found(message),
            CoreError::Internal(_) => Status::internal(message),
        }
    }
}

/// A registry error as a gRPC status.
pub fn store_status(e: StoreError) -> Status {
    CoreError::from(e).into()
}

pub fn parse_job(id: &str) -> Result<JobId, Status> {
    JobId::parse(id).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The request with the CLI's defaults for fields left empty.
pub fn request_from_pb(r: Option<pb::JobRequest>) -> Result<JobRequest, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument("invalid job: missing"))?;
    let d = JobRequest::default();
    Ok(JobRequest {
        source: r.source,
        org: r.org,
        start: r.start,
        end: r.end,
        dest: r.dest,
        layout: if r.layout.is_empty() {
            d.layout
        } else {
            r.layout
        },
        arrival_filter: r.arrival_filter,
        failed_output: (!r.failed_output.is_empty()).then_some(r.failed_output),
        max_event_bytes: if r.max_event_bytes == 0 {
            d.max_event_bytes
        } else {
            r.max_event_bytes as usize
        },
        max_attempts: if r.max_attempts == 0 {
            d.max_attempts
        } else {
            r.max_attempts
        },
        max_range_hours: if r.max_range_hours == 0 {
            d.max_range_hours
        } else {
            r.max_range_hours
        },
        s3: r.s3.map(s3_from_pb).unwrap_or_default(),
        unrecoverable_output: (!r.unrecoverable_output.is_empty())
            .then_some(r.unrecoverable_output),
        event_types: r.event_types,
        domains: r.domains,
        filter: (!r.filter.is_empty()).then_some(r.filter),
        flows: (!r.flows.is_empty()).then_some(r.flows),
        dedup: (!r.dedup.is_empty()).then_some(r.dedup),
        dedup_window_hours: r.dedup_window_hours.unwrap_or(d.dedup_window_hours),
        sink: (!r.sink.is_empty()).then_some(r.sink),
        brokers: (!r.brokers.is_empty()).then_some(r.brokers),
        topic: (!r.topic.is_empty()).then_some(r.topic),
        key: (!r.key.is_empty()).then_some(r.key),
        compression: (!r.compression.is_empty()).then_some(r.compression),
        kafka_options: r.kafka_options,
        kafka_secrets: r.kafka_secrets,
        delivery: (!r.delivery.is_empty()).then_some(r.delivery),
        checkpoint_events: r.checkpoint_events,
        max_events_per_sec: r.max_events_per_sec,
        max_bytes_per_sec: r.max_bytes_per_sec,
        ordered: r.ordered,
        object: (!r.object.is_empty()).then_some(r.object),
        table_format: (!r.table_format.is_empty()).then_some(r.table_format),
        partition_by: r.partition_by.filter(|p| !p.is_empty()),
        ingest: r.ingest.is_some(),
        ingest_to: r.ingest.map(|i| rewind_common::request::IngestTarget {
            trusted: i.trusted,
            landing: i.landing,
            pending: i.pending,
            processed: i.processed,
            dedup: (!i.dedup.is_empty()).then_some(i.dedup),
        }),
        envelope: r.envelope.filter(|e| !e.is_empty()),
        priority: r.priority.filter(|p| !p.is_empty()),
        kinesis_stream: r.kinesis_stream.filter(|p| !p.is_empty()),
        kinesis_endpoint_url: r.kinesis_endpoint_url.filter(|p| !p.is_empty()),
        wrap_lineage: r.wrap_lineage,
        preserve_partition: r.preserve_partition,
        lineage_headers: r.lineage_headers,
        repair: r.repair.map(|x| rewind_common::request::RepairRequest {
            key: x.key,
            delete: x.delete,
            rows: (!x.rows.is_empty()).then_some(x.rows),
        }),
        guard: match r.guard {
            None => None,
            Some(g) => Some(rewind_common::guard::GuardRequest {
                guard: serde_json::from_str(&g.guard_json).map_err(|e| {
                    Status::invalid_argument(format!("invalid --guard: not a guard: {e}"))
                })?,
                keep_backups: g.keep_backups,
                notify: g.notify,
                notify_format: g.notify_format,
                druid_url: (!g.druid_url.is_empty()).then_some(g.druid_url),
                druid_auth: (!g.druid_auth.is_empty()).then_some(g.druid_auth),
            }),
        },
    })
}

fn s3_from_pb(o: pb::S3Options) -> S3Options {
    let opt = |s: String| (!s.is_empty()).then_some(s);
    S3Options {
        region: opt(o.region),
        endpoint_url: opt(o.endpoint_url),
        force_path_style: o.force_path_style,
        source_role_arn: opt(o.source_role_arn),
        source_external_id: opt(o.source_external_id),
        dest_role_arn: opt(o.dest_role_arn),
        dest_external_id: opt(o.dest_external_id),
        role_session_name: opt(o.role_session_name),
        part_size_mib: o.part_size_mib,
        read_ahead: o.read_ahead,
    }
}

fn s3_to_pb(o: &S3Options) -> Option<pb::S3Options> {
    if o == &S3Options::default() {
        return None;
    }
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    Some(pb::S3Options {
        region: s(&o.region),
        endpoint_url: s(&o.endpoint_url),
        force_path_style: o.force_path_style,
        source_role_arn: s(&o.source_role_arn),
        source_external_id: s(&o.source_external_id),
        dest_role_arn: s(&o.dest_role_arn),
        dest_external_id: s(&o.dest_external_id),
        role_session_name: s(&o.role_session_name),
        part_size_mib: o.part_size_mib,
        read_ahead: o.read_ahead,
    })
}

pub fn request_to_pb(r: &JobRequest) -> pb::JobRequest {
    pb::JobRequest {
        source: r.source.clone(),
        org: r.org.clone(),
        start: r.start.clone(),
        end: r.end.clone(),
        dest: r.dest.clone(),
        layout: r.layout.clone(),
        arrival_filter: r.arrival_filter,
        failed_output: r.failed_output.clone().unwrap_or_default(),
        max_event_bytes: r.max_event_bytes as u64,
        max_attempts: r.max_attempts,
        max_range_hours: r.max_range_hours,
        s3: s3_to_pb(&r.s3),
        unrecoverable_output: r.unrecoverable_output.clone().unwrap_or_default(),
        event_types: r.event_types.clone(),
        domains: r.domains.clone(),
        filter: r.filter.clone().unwrap_or_default(),
        flows: r.flows.clone().unwrap_or_default(),
        dedup: r.dedup.clone().unwrap_or_default(),
        dedup_window_hours: Some(r.dedup_window_hours),
        sink: r.sink.clone().unwrap_or_default(),
        brokers: r.brokers.clone().unwrap_or_default(),
        topic: r.topic.clone().unwrap_or_default(),
        key: r.key.clone().unwrap_or_default(),
        compression: r.compression.clone().unwrap_or_default(),
        kafka_options: r.kafka_options.clone(),
        kafka_secrets: r.kafka_secrets.clone(),
        delivery: r.delivery.clone().unwrap_or_default(),
        checkpoint_events: r.checkpoint_events,
        max_events_per_sec: r.max_events_per_sec,
        max_bytes_per_sec: r.max_bytes_per_sec,
        ordered: r.ordered,
        object: r.object.clone().unwrap_or_default(),
        table_format: r.table_format.clone().unwrap_or_default(),
        partition_by: r.partition_by.clone(),
        envelope: r.envelope.clone(),
        priority: r.priority.clone(),
        kinesis_stream: r.kinesis_stream.clone(),
        kinesis_endpoint_url: r.kinesis_endpoint_url.clone(),
        wrap_lineage: r.wrap_lineage,
        preserve_partition: r.preserve_partition,
        lineage_headers: r.lineage_headers,
        ingest: r.ingest_to.as_ref().map(|i| pb::IngestRequest {
            trusted: i.trusted.clone(),
            landing: i.landing.clone(),
            pending: i.pending.clone(),
            processed: i.processed.clone(),
            dedup: i.dedup.clone().unwrap_or_default(),
        }),
        repair: r.repair.as_ref().map(|x| pb::RepairRequest {
            key: x.key.clone(),
            delete: x.delete.clone(),
            rows: x.rows.clone().unwrap_or_default(),
        }),
        guard: r.guard.as_ref().map(|g| pb::GuardRequest {
            guard_json: serde_json::to_string(&g.guard).unwrap_or_default(),
            keep_backups: g.keep_backups,
            notify: g.notify.clone(),
            notify_format: g.notify_format.clone(),
            druid_url: g.druid_url.clone().unwrap_or_default(),
            druid_auth: g.druid_auth.clone().unwrap_or_default(),
        }),
    }
}

fn flows_to_pb(flows: &BTreeMap<String, FlowCounts>) -> HashMap<String, pb::FlowCounts> {
    flows
        .iter()
        .map(|(name, c)| {
            let pb = pb::FlowCounts {
                matched: c.matched,
                repaired: c.repaired,
                failed: c.failed,
                unrecoverable: c.unrecoverable,
                filtered: c.filtered,
            };
            (name.clone(), pb)
        })
        .collect()
}

pub fn counts_to_pb(c: &ShardCounts) -> pb::EventCounts {
    {
        pb::EventCounts {
            objects: c.objects,
            bytes: c.bytes,
            recovered: c.recovered,
            filtered: c.filtered,
            failed: c.failed,
            objects_skipped: c.objects_skipped,
            unrecoverable: c.unrecoverable,
            repaired: c.repaired,
            duplicates: c.duplicates,
            flows: flows_to_pb(&c.flows),
            produced: c.produced,
            acknowledged: c.acknowledged,
        }
    }
}

pub fn progress_to_pb(p: JobProgress) -> pb::ShardCounts {
    {
        pb::ShardCounts {
            total: p.total(),
            pending: p.pending,
            running: p.running,
            done: p.done,
            failed: p.failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a client sets survives the wire: a request converted to protobuf and back is
    /// the request (the newer fields too: partition-by, envelopes, guards, ingests, repairs,
    /// priorities, Kinesis streams).
    #[test]
    fn requests_round_trip_through_protobuf() {
        let guard: rewind_common::guard::Guard = serde_json::from_value(serde_json::json!({
            "stream": "ingest", "topic": "t",
            "sources": [{"druid": {"name": "druid:ds", "datasource": "ds"}}]
        }))
        .unwrap();
        let r = JobRequest {
            source: "s3://a/b".into(),
            org: "TN-1".into(),
            start: "2024-01-01".into(),
            end: "2024-01-02".into(),
            dest: "/out".into(),
            sink: Some("kafka".into()),
            brokers: Some("k:9092".into()),
            topic: Some("t".into()),
            partition_by: Some("d={domain}".into()),
            envelope: Some("kcat".into()),
            priority: Some("backfill".into()),
            preserve_partition: true,
            lineage_headers: true,
            ingest: true,
            ingest_to: Some(rewind_common::request::IngestTarget {
                trusted: "/trusted".into(),
                landing: "/landing".into(),
                pending: "pending/".into(),
                processed: "processed/".into(),
                dedup: Some("event_id".into()),
            }),
            guard: Some(rewind_common::guard::GuardRequest {
                guard,
                keep_backups: true,
                notify: vec!["env:HOOK".into()],
                notify_format: "slack".into(),
                druid_url: Some("http://druid:8888".into()),
                druid_auth: Some("file:/run/druid".into()),
            }),
            repair: Some(rewind_common::request::RepairRequest {
                key: "event_id".into(),
                delete: vec!["a".into()],
                rows: Some("{}".into()),
            }),
            table_format: Some("parquet".into()),
            kinesis_stream: Some("replays".into()),
            kinesis_endpoint_url: Some("http://127.0.0.1:4566".into()),
            wrap_lineage: true,
            ..JobRequest::default()
        };
        let back = request_from_pb(Some(request_to_pb(&r))).unwrap();
        assert_eq!(back, r);
    }
}
