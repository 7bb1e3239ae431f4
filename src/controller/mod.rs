//! Controllers: the source controller (source revisions -> store), with allocation of
//! ClusterIPs and NodePorts. Workload controllers (deployments, replicasets, endpoints, nodes)
//! come next, one module each.

pub mod alloc;
pub mod source;
