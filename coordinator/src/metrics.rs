//! Prometheus metrics of a coordinator (`rewind-coordinator --metrics-listen`). Job-level
//! gauges are labelled by job id for unfinished jobs only, so cardinality stays bounded.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rewind_common::registry::JobRegistry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobShardLabel {
    pub job: String,
    pub state: String,
}

#[derive(Clone, Debug, Default)]
pub struct CoordinatorMetrics {
    /// 1 while this replica leads.
    pub leader: Gauge,
    pub jobs_finished: Family<StateLabel, Counter>,
    /// Shards of unfinished jobs by state (refreshed from etcd at every scrape).
    pub job_shards: Family<JobShardLabel, Gauge>,
    /// Pending shards over all unfinished jobs.
    pub shards_pending: Gauge,
    /// Worker slots the unfinished jobs can use now: pending + running shards. What an
    /// autoscaler scales workers on (pending alone falls to 0 while the last shards run, and
    /// scaling in on it drains workers under running work).
    pub shards_wanted: Gauge,
    pub jobs_active: Gauge,
    pub etcd_compactions: Counter,
}

impl CoordinatorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("rewind");
        r.register(
            "coordinator_leader",
            "1 while this coordinator replica leads",
            self.leader.clone(),
        );
        r.register(
            "jobs_finished",
            "Jobs this replica finished, by final state",
            self.jobs_finished.clone(),
        );
        r.register(
            "job_shards",
            "Shards of unfinished jobs, by job and state",
            self.job_shards.clone(),
        );
        r.register(
            "shards_pending",
            "Pending shards over all unfinished jobs",
            self.shards_pending.clone(),
        );
        r.register(
            "shards_wanted",
            "Worker slots the unfinished jobs can use: pending + running shards (scale workers on this)",
            self.shards_wanted.clone(),
        );
        r.register("jobs_active", "Unfinished jobs", self.jobs_active.clone());
        r.register(
            "etcd_compactions",
            "Compactions of etcd's history done by this replica",
            self.etcd_compactions.clone(),
        );
    }

    /// Re-reads the unfinished jobs' shard counts from the registry (called before each scrape).
    pub async fn refresh<R: JobRegistry>(&self, store: &R) {
        let Ok(active) = store.active_jobs().await else {
            return;
        };
        self.job_shards.clear();
        let (mut pending, mut running) = (0, 0);
        let ids: Vec<rewind_common::JobId> = active.iter().map(|(job, _)| job.clone()).collect();
        for (job, p) in ids.iter().zip(store.progress_of(&ids).await) {
            let Ok(p) = p else {
                continue;
            };
            pending += p.pending;
            running += p.running;
            for (state, n) in [
                ("pending", p.pending),
                ("running", p.running),
                ("done", p.done),
                ("failed", p.failed),
            ] {
                self.job_shards
                    .get_or_create(&JobShardLabel {
                        job: job.to_string(),
                        state: state.to_string(),
                    })
                    .set(n as i64);
            }
        }
        self.jobs_active.set(active.len() as i64);
        self.shards_pending.set(pending as i64);
        self.shards_wanted.set((pending + running) as i64);
    }
}
