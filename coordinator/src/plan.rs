//! Planning: a job is split into one shard per hour of its range.

use rewind_common::{JobSpec, ShardId};

/// One planned shard and the prefix it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedShard {
    pub id: ShardId,
    pub prefix: String,
}

pub fn plan(spec: &JobSpec) -> Vec<PlannedShard> {
    spec.range
        .hours()
        .map(|hour| PlannedShard {
            id: ShardId(hour),
            prefix: spec.layout.prefix(hour, &spec.org),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::{HourRange, JobId, Layout, OrgId};

    #[test]
    fn one_shard_per_hour_with_distinct_prefixes() {
        let spec = JobSpec {
            job: JobId::generate(),
            org: OrgId::parse("TN-1").unwrap(),
            range: HourRange::parse("2024-02-28T22", "2024-03-01", 1000).unwrap(),
            layout: Layout::default(),
            arrival_filter: false,
            max_event_bytes: 1 << 20,
            max_attempts: 3,
        };
        let shards = plan(&spec);
        assert_eq!(shards.len(), 2 + 24 + 24);
        assert_eq!(shards[0].prefix, "main_stream/2024/02/28/22/");
        assert_eq!(shards[2].prefix, "main_stream/2024/02/29/00/");
        assert_eq!(shards.last().unwrap().id.to_string(), "2024030123");
        let mut prefixes: Vec<_> = shards.iter().map(|s| &s.prefix).collect();
        prefixes.dedup();
        assert_eq!(prefixes.len(), shards.len());
    }
}
