//! The scheduler: binds pending pods to nodes by filtering then scoring, as kube-scheduler does.
//!
//! - [`quantity`]: Kubernetes quantities (`100m`, `64Mi`, `1G`) -> millicores and bytes.
//! - [`snapshot`]: nodes and pods pre-parsed (interned labels, usage per node) for a JSON-free
//!   inner loop.
//! - [`filter`] and [`score`]: the pure decisions; [`schedule`] puts them together.
//! - [`cache`]: the snapshot kept current from the store's watch, plus assumed binds.
//! - [`controller`]: the `Scheduler` reconciler: binds, writes PodScheduled, records events.
//! - [`bench`]: `tend bench schedule`.

pub mod bench;
pub mod cache;
pub mod controller;
pub mod filter;
pub mod quantity;
pub mod score;
pub mod snapshot;

pub use controller::Scheduler;
pub use snapshot::{NodeSpec, PodRequirements, Snapshot};

use filter::ReasonCounts;

/// No node can take the pod; `message` is kube-scheduler's FailedScheduling text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    pub message: String,
}

/// Picks the node for `pod`: the best-ranked node that passes every filter.
pub fn schedule(pod: &PodRequirements, snapshot: &Snapshot) -> Result<String, Unschedulable> {
    let nodes = snapshot.nodes();
    if nodes.is_empty() {
        return Err(Unschedulable {
            message: "no nodes available to schedule pods".to_string(),
        });
    }
    let resolved = snapshot.resolve(pod);
    let mut best: Option<(usize, score::NodeScore)> = None;
    let mut rejected = ReasonCounts::default();
    for (i, node) in nodes.iter().enumerate() {
        let reasons = filter::filter(&resolved, node);
        if !reasons.fits() {
            rejected.add(reasons);
            continue;
        }
        let s = score::score(&resolved, node);
        let better = match &best {
            None => true,
            Some((b, bs)) => score::rank(&s, node, bs, &nodes[*b]).is_lt(),
        };
        if better {
            best = Some((i, s));
        }
    }
    match best {
        Some((i, _)) => Ok(nodes[i].name.clone()),
        None => Err(Unschedulable {
            message: rejected.message(nodes.len()),
        }),
    }
}
