//! Which job a free worker slot claims from next: weighted fair sharing of the fleet's slots,
//! first between tenants (orgs), then between one tenant's jobs (docs/scheduling.md).
//!
//! A tenant's weight is the weight of its most urgent running job ([`Priority::weight`]), a
//! job's weight its own. A free slot tries the jobs in the order [`order`] gives: first the
//! tenant that, once it took the slot, would hold the fewest running shards for its weight
//! (`(running + 1) / weight`), within it the job likewise, ties to the older job. Shards are never preempted: a long backfill that holds
//! every slot gives them up one by one as its shards finish, and each freed slot goes to
//! whoever is furthest below its share — so an urgent job of another tenant starts within one
//! shard's time, and over a long run each tenant's share of the slots converges to its weight
//! over the sum of the weights.
//!
//! [`Priority::weight`]: rewind_common::request::Priority::weight

use std::cmp::Ordering;
use std::collections::HashMap;

/// One running job as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Who the job is for (its org).
    pub tenant: String,
    /// Its priority's weight (> 0).
    pub weight: u32,
    /// Its shards claimed right now, across the fleet (as last read, plus this worker's claims
    /// since).
    pub running: u64,
}

/// The jobs' indices in the order a free slot should try them. `jobs` is in submission order
/// (oldest first), which breaks ties.
pub fn order(jobs: &[Share]) -> Vec<usize> {
    let mut tenants: HashMap<&str, (u64, u32)> = HashMap::new();
    for j in jobs {
        let t = tenants.entry(j.tenant.as_str()).or_insert((0, 0));
        t.0 += j.running;
        t.1 = t.1.max(j.weight.max(1));
    }
    let mut idx: Vec<usize> = (0..jobs.len()).collect();
    idx.sort_by(|&a, &b| {
        let (ta, tb) = (
            tenants[jobs[a].tenant.as_str()],
            tenants[jobs[b].tenant.as_str()],
        );
        below(ta.0, ta.1, tb.0, tb.1)
            .then_with(|| {
                below(
                    jobs[a].running,
                    jobs[a].weight,
                    jobs[b].running,
                    jobs[b].weight,
                )
            })
            .then(a.cmp(&b))
    });
    idx
}

/// Compares who would be further below its share after taking the slot:
/// `(running_a + 1) / weight_a` against `(running_b + 1) / weight_b`, exactly (no floats).
/// (Comparing `running / weight` would hand a slot to any tenant with none running, however
/// small its weight: with 2 slots, a backfill would take one from an interactive job.)
fn below(running_a: u64, weight_a: u32, running_b: u64, weight_b: u32) -> Ordering {
    let a = (running_a as u128 + 1) * weight_b.max(1) as u128;
    let b = (running_b as u128 + 1) * weight_a.max(1) as u128;
    a.cmp(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rewind_common::request::Priority;

    fn share(tenant: &str, p: Priority, running: u64) -> Share {
        Share {
            tenant: tenant.into(),
            weight: p.weight(),
            running,
        }
    }

    #[test]
    fn the_tenant_furthest_below_its_share_goes_first() {
        use Priority::*;
        // A's backfill holds 7 slots; B's urgent job has none: B first, whatever the ages.
        let jobs = [share("A", Backfill, 7), share("B", Interactive, 0)];
        assert_eq!(order(&jobs), vec![1, 0]);
        // Equal priorities: the tenant with fewer running shards first.
        let jobs = [share("A", Normal, 3), share("B", Normal, 1)];
        assert_eq!(order(&jobs), vec![1, 0]);
        // A backfill with nothing running does not take a slot from an interactive job with
        // fewer than 8 running: (0 + 1) / 1 > (1 + 1) / 8.
        let jobs = [share("A", Backfill, 0), share("B", Interactive, 1)];
        assert_eq!(order(&jobs), vec![1, 0]);
        let jobs = [share("A", Backfill, 0), share("B", Interactive, 8)];
        assert_eq!(order(&jobs), vec![0, 1]);
        // A tenant's many jobs do not buy it more slots: A's two jobs hold 2 + 2, C's one 3.
        let jobs = [
            share("A", Normal, 2),
            share("A", Normal, 2),
            share("C", Normal, 3),
        ];
        assert_eq!(order(&jobs)[0], 2);
        // Within a tenant, by the jobs' own weights; ties to the older job.
        let jobs = [
            share("A", Backfill, 1),
            share("A", Interactive, 4),
            share("A", Normal, 0),
            share("A", Normal, 0),
        ];
        assert_eq!(order(&jobs), vec![2, 3, 1, 0]);
        assert!(order(&[]).is_empty());
    }

    /// A fleet of `slots` slots over `steps` shard completions: each time a shard ends, its
    /// slot goes to the first job in `order` that still has shards. Returns each job's claims.
    fn simulate(jobs: &mut [Share], pending: &mut [u64], slots: u64, steps: usize) -> Vec<u64> {
        let mut claimed = vec![0u64; jobs.len()];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut running: Vec<usize> = Vec::new();
        for step in 0..steps + slots as usize {
            if step >= slots as usize && !running.is_empty() {
                // A pseudo-random running shard ends.
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let done = running.swap_remove((rng % running.len() as u64) as usize);
                jobs[done].running -= 1;
            }
            if let Some(&j) = order(jobs).iter().find(|&&j| pending[j] > 0) {
                pending[j] -= 1;
                jobs[j].running += 1;
                claimed[j] += 1;
                running.push(j);
            }
        }
        claimed
    }

    #[test]
    fn shares_converge_to_the_weights() {
        use Priority::*;
        // Three tenants, backfill (1), normal (4), interactive (8), all with endless work.
        let mut jobs = vec![
            share("A", Backfill, 0),
            share("B", Normal, 0),
            share("C", Interactive, 0),
        ];
        let mut pending = vec![u64::MAX; 3];
        let claimed = simulate(&mut jobs, &mut pending, 26, 26_000);
        let total: u64 = claimed.iter().sum();
        for (j, w) in [(0, 1.0), (1, 4.0), (2, 8.0)] {
            let got = claimed[j] as f64 / total as f64;
            let want = w / 13.0;
            assert!(
                (got - want).abs() < 0.02,
                "job {j}: {got:.3} of the slots, want {want:.3}"
            );
        }
    }

    #[test]
    fn an_urgent_job_runs_beside_a_backfill_that_holds_every_slot() {
        use Priority::*;
        // A's backfill: 1,000 shards, all 8 slots busy. Then B submits 4 interactive shards.
        let mut jobs = vec![share("A", Backfill, 8), share("B", Interactive, 0)];
        let mut pending = vec![992, 4];
        // B takes the next 4 freed slots: its last shard starts within 4 completions.
        let claimed = simulate(&mut jobs, &mut pending, 0, 4);
        assert_eq!(claimed, vec![0, 4]);
        // Even at normal priority B goes first while it has fewer running than A.
        let mut jobs = vec![share("A", Backfill, 8), share("B", Normal, 0)];
        let mut pending = vec![992, 4];
        assert_eq!(simulate(&mut jobs, &mut pending, 0, 4), vec![0, 4]);
    }
}
