//! Controllers, one module each, on a shared loop (`runtime`): the source controller (source
//! revisions -> store, with ClusterIP/NodePort allocation), and the workload controllers.

pub mod alloc;
pub mod deployment;
pub mod events;
pub mod rollout;
pub mod runtime;
pub mod source;
