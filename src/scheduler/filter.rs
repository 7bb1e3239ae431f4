//! Filters, in kube-scheduler's plugin order (NodeUnschedulable, the not-ready taint,
//! NodeAffinity/nodeSelector, NodePorts, NodeResourcesFit): a node fails on the first filter
//! that rejects it; NodeResourcesFit reports every resource that is short. The reasons of all
//! nodes make the FailedScheduling message.

use super::snapshot::{NodeInfo, ResolvedPod};

/// Why a node cannot take a pod, with kube-scheduler's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    Unschedulable,
    NotReady,
    NodeSelector,
    HostPorts,
    TooManyPods,
    InsufficientCpu,
    InsufficientMemory,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Unschedulable,
        Reason::NotReady,
        Reason::NodeSelector,
        Reason::HostPorts,
        Reason::TooManyPods,
        Reason::InsufficientCpu,
        Reason::InsufficientMemory,
    ];

    pub fn message(self) -> &'static str {
        match self {
            Reason::Unschedulable => "node(s) were unschedulable",
            Reason::NotReady => "node(s) were not ready",
            Reason::NodeSelector => "node(s) didn't match node selector",
            Reason::HostPorts => "node(s) didn't have free ports for the requested pod ports",
            Reason::TooManyPods => "Too many pods",
            Reason::InsufficientCpu => "Insufficient cpu",
            Reason::InsufficientMemory => "Insufficient memory",
        }
    }
}

/// The reasons one node rejects a pod; empty when the pod fits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reasons(u8);

impl Reasons {
    pub fn fits(self) -> bool {
        self.0 == 0
    }

    fn with(self, reason: Reason) -> Reasons {
        Reasons(self.0 | 1 << reason as u8)
    }

    pub fn only(reason: Reason) -> Reasons {
        Reasons::default().with(reason)
    }

    pub fn contains(self, reason: Reason) -> bool {
        self.0 & (1 << reason as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Reason> {
        Reason::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

/// Runs the filters of one node for one pod.
pub fn filter(pod: &ResolvedPod, node: &NodeInfo) -> Reasons {
    if node.unschedulable {
        return Reasons::only(Reason::Unschedulable);
    }
    if !node.ready {
        return Reasons::only(Reason::NotReady);
    }
    match &pod.selector {
        None => return Reasons::only(Reason::NodeSelector),
        Some(required) if !node.has_labels(required) => {
            return Reasons::only(Reason::NodeSelector);
        }
        Some(_) => {}
    }
    let wanted = &pod.pod.host_ports;
    if !wanted.is_empty()
        && wanted
            .iter()
            .any(|w| node.host_ports().iter().any(|used| used.clashes_with(w)))
    {
        return Reasons::only(Reason::HostPorts);
    }
    resources_fit(pod, node)
}

/// NodeResourcesFit: the pod count, then every resource whose request exceeds what is left.
/// A zero request always fits (Kubernetes skips resources the pod does not ask for).
fn resources_fit(pod: &ResolvedPod, node: &NodeInfo) -> Reasons {
    let mut reasons = Reasons::default();
    if node.pods + 1 > node.max_pods {
        reasons = reasons.with(Reason::TooManyPods);
    }
    let want = pod.pod.requests;
    if want.milli_cpu > 0
        && want.milli_cpu
            > node
                .allocatable
                .milli_cpu
                .saturating_sub(node.requested.milli_cpu)
    {
        reasons = reasons.with(Reason::InsufficientCpu);
    }
    if want.memory > 0
        && want.memory
            > node
                .allocatable
                .memory
                .saturating_sub(node.requested.memory)
    {
        reasons = reasons.with(Reason::InsufficientMemory);
    }
    reasons
}

/// Per-reason node counts, for the message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReasonCounts([u32; Reason::ALL.len()]);

impl ReasonCounts {
    pub fn add(&mut self, reasons: Reasons) {
        for r in reasons.iter() {
            self.0[r as usize] += 1;
        }
    }

    /// The FailedScheduling message: `0/N nodes are available: ` then `COUNT reason` entries,
    /// the most frequent reason first (ties by reason), joined by `, `, and a full stop, as
    /// DESIGN.md gives it: `2 node(s) didn't match node selector, 1 Insufficient memory.`
    /// (kube-scheduler itself sorts the entries as plain strings, which puts `1 Insufficient
    /// memory` first; the most frequent reason first reads better and is what tend promises.)
    pub fn message(&self, total_nodes: usize) -> String {
        let mut counted: Vec<(u32, &str)> = Reason::ALL
            .into_iter()
            .filter(|r| self.0[*r as usize] > 0)
            .map(|r| (self.0[r as usize], r.message()))
            .collect();
        counted.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
        let entries: Vec<String> = counted.iter().map(|(n, m)| format!("{n} {m}")).collect();
        format!(
            "0/{total_nodes} nodes are available: {}.",
            entries.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::snapshot::{NodeSpec, PodRequirements, Resources, Snapshot};

    fn snapshot_of(spec: NodeSpec) -> Snapshot {
        let mut s = Snapshot::new();
        s.upsert_node(spec);
        s
    }

    fn spec() -> NodeSpec {
        NodeSpec {
            name: "n1".into(),
            labels: vec![("disk".into(), "ssd".into())],
            ready: true,
            unschedulable: false,
            allocatable: Resources {
                milli_cpu: 1000,
                memory: 1000,
            },
            max_pods: 1,
        }
    }

    #[test]
    fn the_first_failing_filter_decides_except_within_resources() {
        let pod = PodRequirements {
            requests: Resources {
                milli_cpu: 2000,
                memory: 2000,
            },
            node_selector: vec![("disk".into(), "hdd".into())],
            ..Default::default()
        };
        let cordoned = snapshot_of(NodeSpec {
            unschedulable: true,
            ready: false,
            ..spec()
        });
        let reasons = filter(&cordoned.resolve(&pod), &cordoned.nodes()[0]);
        assert_eq!(reasons.iter().collect::<Vec<_>>(), [Reason::Unschedulable]);

        let s = snapshot_of(spec());
        let reasons = filter(&s.resolve(&pod), &s.nodes()[0]);
        assert_eq!(reasons.iter().collect::<Vec<_>>(), [Reason::NodeSelector]);

        let mut s = snapshot_of(spec());
        s.add_pod("n1", &PodRequirements::default());
        let pod = PodRequirements {
            node_selector: vec![("disk".into(), "ssd".into())],
            ..pod
        };
        let reasons = filter(&s.resolve(&pod), &s.nodes()[0]);
        assert_eq!(
            reasons.iter().collect::<Vec<_>>(),
            [
                Reason::TooManyPods,
                Reason::InsufficientCpu,
                Reason::InsufficientMemory
            ]
        );
    }

    #[test]
    fn messages_put_the_most_frequent_reason_first() {
        let mut counts = ReasonCounts::default();
        for _ in 0..2 {
            counts.add(Reasons::only(Reason::NodeSelector));
        }
        counts.add(Reasons::only(Reason::InsufficientMemory));
        assert_eq!(
            counts.message(3),
            "0/3 nodes are available: 2 node(s) didn't match node selector, 1 Insufficient memory."
        );
    }
}
