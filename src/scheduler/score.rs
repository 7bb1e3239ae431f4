//! Scoring of the nodes that passed the filters. Ranked in order, each breaking the ties of
//! the one before: fewest pods of the pod's owner (spreading replicas, like SelectorSpread /
//! PodTopologySpread on hostnames), then most room left (LeastAllocated), then fewest pods,
//! then the lowest name, so that the choice is stable yet identical nodes still fill evenly.

use super::snapshot::{NodeInfo, ResolvedPod, Resources};
use std::cmp::Ordering;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeScore {
    pub owner_pods: u32,
    /// 0..=100, higher is emptier.
    pub least_requested: i64,
    pub pods: i64,
}

pub fn score(pod: &ResolvedPod, node: &NodeInfo) -> NodeScore {
    NodeScore {
        owner_pods: node.pods_of_owner(pod.owner),
        least_requested: least_requested(
            node.score_requested,
            pod.pod.score_requests,
            node.allocatable,
        ),
        pods: node.pods,
    }
}

/// Kubernetes' LeastAllocated with cpu and memory weighted equally: per resource,
/// `(allocatable - requested) * 100 / allocatable` with the pod counted in, 0 when full;
/// then the mean. Worked example: 4 cpu with 1 used, pod asks 1 -> (4000-2000)*100/4000 = 50;
/// 8Gi with 2Gi used, pod asks 2Gi -> 50; score (50+50)/2 = 50.
pub fn least_requested(used: Resources, pod: Resources, allocatable: Resources) -> i64 {
    let one = |used: i64, want: i64, capacity: i64| -> i64 {
        let requested = used.saturating_add(want);
        if capacity <= 0 || requested > capacity {
            return 0;
        }
        // In i128: a node without a reported capacity has i64::MAX of it.
        ((i128::from(capacity - requested) * 100) / i128::from(capacity)) as i64
    };
    let cpu = one(used.milli_cpu, pod.milli_cpu, allocatable.milli_cpu);
    let memory = one(used.memory, pod.memory, allocatable.memory);
    (cpu + memory) / 2
}

/// `Less` when node `a` (with score `sa`) is the better choice.
pub fn rank(sa: &NodeScore, a: &NodeInfo, sb: &NodeScore, b: &NodeInfo) -> Ordering {
    sa.owner_pods
        .cmp(&sb.owner_pods)
        .then(sb.least_requested.cmp(&sa.least_requested))
        .then(sa.pods.cmp(&sb.pods))
        .then_with(|| a.name.cmp(&b.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(milli_cpu: i64, memory: i64) -> Resources {
        Resources { milli_cpu, memory }
    }

    #[test]
    fn least_requested_is_the_mean_room_left_with_the_pod() {
        let gi = 1 << 30;
        assert_eq!(
            least_requested(r(1000, 2 * gi), r(1000, 2 * gi), r(4000, 8 * gi)),
            50
        );
        assert_eq!(least_requested(r(0, 0), r(0, 0), r(4000, 8 * gi)), 100);
        // cpu full (0) and memory 3/4 free (75): 37 after integer division, as in Kubernetes.
        assert_eq!(
            least_requested(r(3000, 0), r(1000, 2 * gi), r(4000, 8 * gi)),
            37
        );
        assert_eq!(
            least_requested(r(4000, 0), r(1, 0), r(4000, 8 * gi)),
            50,
            "over: 0"
        );
        assert_eq!(least_requested(r(0, 0), r(100, 0), r(0, 0)), 0);
        assert_eq!(least_requested(r(5, 5), r(5, 5), r(i64::MAX, i64::MAX)), 99);
    }
}
