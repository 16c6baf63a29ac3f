//! Tallying a shard: every decoded item's outcome counted once (by reason, by flow), published
//! to the live progress once per object, and checked at the end (outcomes = items decoded).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use rewind_common::job::FlowCounts;
use rewind_common::shard_store::ShardCounts;
use rewind_flows::FlowSet;

use super::{Progress, ShardError};

/// The counts of one attempt.
pub(super) struct Tally<'f> {
    pub counts: ShardCounts,
    pub by_reason: BTreeMap<String, u64>,
    pub filtered_by: BTreeMap<String, u64>,
    flows: &'f FlowSet,
    per_flow: Vec<FlowCounts>,
    /// What was published to the live progress so far.
    published: ShardCounts,
    published_flows: Vec<FlowCounts>,
}

impl<'f> Tally<'f> {
    pub fn new(flows: &'f FlowSet) -> Self {
        Tally {
            counts: ShardCounts::default(),
            by_reason: BTreeMap::new(),
            filtered_by: BTreeMap::new(),
            flows,
            per_flow: vec![FlowCounts::default(); flows.len()],
            published: ShardCounts::default(),
            published_flows: vec![FlowCounts::default(); flows.len()],
        }
    }

    pub fn decoded(&mut self) {
        self.counts.decoded += 1;
    }

    pub fn recovered(&mut self, flow: Option<usize>, repaired: bool) {
        self.counts.recovered += 1;
        if let Some(f) = flow {
            self.per_flow[f].matched += 1;
            if repaired {
                self.per_flow[f].repaired += 1;
                self.counts.repaired += 1;
            }
        }
    }

    pub fn filtered(&mut self, reason: &str, flow: Option<usize>) {
        self.counts.filtered += 1;
        *self.filtered_by.entry(reason.into()).or_default() += 1;
        if reason == "duplicate" {
            self.counts.duplicates += 1;
        }
        if let Some(f) = flow {
            self.per_flow[f].matched += 1;
            if reason == "flow" {
                self.per_flow[f].filtered += 1;
            }
        }
    }

    /// A failed item (an event a step or a field check failed, a damaged range, a record the
    /// sink refused), counted under its code.
    pub fn failed(&mut self, code: &str, flow: Option<usize>) {
        self.counts.failed += 1;
        *self.by_reason.entry(code.into()).or_default() += 1;
        if let Some(f) = flow {
            self.per_flow[f].matched += 1;
            if code == "flow_step" {
                self.per_flow[f].failed += 1;
            }
        }
    }

    pub fn unrecoverable(&mut self, flow: Option<usize>) {
        self.counts.unrecoverable += 1;
        if let Some(f) = flow {
            self.per_flow[f].matched += 1;
            self.per_flow[f].unrecoverable += 1;
        }
    }

    /// A recovered event the sink refused after the fact (the brokers rejected it): failed.
    pub fn refused_later(&mut self) {
        self.counts.recovered -= 1;
        self.failed("kafka_rejected", None);
    }

    /// One object read to its end: counted, and what changed published to the live progress
    /// (once per object keeps atomics out of the per-event loop).
    pub fn object_done(&mut self, stored_bytes: u64, p: &Progress) {
        self.counts.objects += 1;
        self.counts.bytes += stored_bytes;
        let (now, was) = (&self.counts, &self.published);
        p.objects.fetch_add(1, Ordering::Relaxed);
        p.bytes.fetch_add(stored_bytes, Ordering::Relaxed);
        p.recovered
            .fetch_add(now.recovered - was.recovered, Ordering::Relaxed);
        p.filtered
            .fetch_add(now.filtered - was.filtered, Ordering::Relaxed);
        p.failed
            .fetch_add(now.failed - was.failed, Ordering::Relaxed);
        p.unrecoverable
            .fetch_add(now.unrecoverable - was.unrecoverable, Ordering::Relaxed);
        self.published = self.counts.clone();
        if self.per_flow != self.published_flows {
            let mut live = p.flows.lock().unwrap_or_else(|e| e.into_inner());
            for (i, (now, was)) in self.per_flow.iter().zip(&self.published_flows).enumerate() {
                let c = live.entry(self.flows.name(i).to_string()).or_default();
                c.matched += now.matched - was.matched;
                c.repaired += now.repaired - was.repaired;
                c.failed += now.failed - was.failed;
                c.unrecoverable += now.unrecoverable - was.unrecoverable;
                c.filtered += now.filtered - was.filtered;
            }
            self.published_flows = self.per_flow.clone();
        }
    }

    /// Every decoded item has exactly one outcome.
    /// Adds what another tally (one object's, counted on another thread) counted. Live
    /// progress is published by [`Tally::object_done`] as usual.
    pub fn absorb(&mut self, other: Tally<'_>) {
        self.counts.add(&other.counts);
        for (k, v) in other.by_reason {
            *self.by_reason.entry(k).or_default() += v;
        }
        for (k, v) in other.filtered_by {
            *self.filtered_by.entry(k).or_default() += v;
        }
        for (mine, theirs) in self.per_flow.iter_mut().zip(&other.per_flow) {
            mine.add(theirs);
        }
    }

    pub fn check(&self) -> Result<(), ShardError> {
        let c = &self.counts;
        let outcomes = c.recovered + c.filtered + c.failed + c.unrecoverable;
        if outcomes != c.decoded {
            return Err(ShardError {
                message: format!(
                    "internal error: {} items decoded but {outcomes} outcomes counted",
                    c.decoded
                ),
                retryable: false,
            });
        }
        Ok(())
    }

    /// The counts with the per-flow counts by name, and the reasons.
    pub fn finish(mut self) -> (ShardCounts, BTreeMap<String, u64>, BTreeMap<String, u64>) {
        let flows = self.flows;
        self.counts.flows = self
            .per_flow
            .into_iter()
            .enumerate()
            .map(|(i, c)| (flows.name(i).to_string(), c))
            .collect();
        (self.counts, self.by_reason, self.filtered_by)
    }
}
