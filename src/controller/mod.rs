//! Controllers, one module each, on a shared loop (`runtime`): the source controller (source
//! revisions -> store, with ClusterIP/NodePort allocation), Deployments (with the rollout
//! arithmetic in `rollout`), ReplicaSets, the garbage collector, the node lifecycle
//! controller (pod CIDRs, NotReady, eviction), and Endpoints/EndpointSlices of Services.

pub mod alloc;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod node;
pub mod replicaset;
pub mod rollout;
pub mod runtime;
pub mod source;
