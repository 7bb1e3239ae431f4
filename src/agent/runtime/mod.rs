//! Containers on a node (issue 4 part 3): OCI bundles from the image config and the pod
//! spec, runc to run them, and the restart rules.
//!
//! - [`bundle`]: `config.json` from the image config and a Kubernetes container (pure).
//! - [`env`]: a container's environment, the Service variables shared between containers.
//! - [`runc`]: the [`runc::ContainerRuntime`] trait, the real `runc` and a recording fake.
//! - [`reaper`]: the node's reaper, which starts containers and keeps their exit codes
//!   across agent restarts.
//! - [`restart`]: restartPolicy, CrashLoopBackOff and the reported state/reason (pure).

pub mod bundle;
pub mod env;
pub mod reaper;
pub mod restart;
pub mod runc;
