//! Controllers, one module each, on a shared loop (`runtime`): the source controller (source
//! revisions -> store, with ClusterIP/NodePort allocation), the ReplicaSet controller, the
//! garbage collector, and the node lifecycle controller (pod CIDRs, NotReady, eviction).

pub mod alloc;
pub mod events;
pub mod gc;
pub mod node;
pub mod replicaset;
pub mod runtime;
pub mod source;
