//! tend: a GitOps deployment system with Kubernetes semantics and no Kubernetes cluster.
//!
//! The data flows one way, and the modules follow it:
//!
//! - [`source`]: a git repository or a directory -> revisions (commit id, message, files).
//! - [`manifest`]: YAML files -> validated, defaulted Kubernetes objects, errors with `file:line:column`.
//! - [`plan`]: desired objects vs applied objects -> create / update (JSON patch) / prune.
//! - [`store`]: the object store (`Store` trait; redb backend), resourceVersions, watches, revisions.
//! - [`controller`]: the controller loop (`runtime`), the source controller (revisions -> store,
//!   ClusterIP/NodePort allocation), ReplicaSets, garbage collection, node lifecycle.
//! - [`server`]: the HTTP API (axum), bearer-token authentication, webhooks.
//! - [`cli`]: the command-line client (`get`, `describe`, `diff`), kubectl-style tables.
//! - [`agent`]: the node side: `tend agent` (images, runc, pod network, probes, logs, the
//!   Service proxy in nftables), the agents' API client and the simulated node.
//! - [`errors`]: errors written as one line (every cause, or the innermost).
//! - [`api`]: the object model shared by all: kinds, keys, metadata helpers, selectors.

pub mod agent;
pub mod api;
pub mod bench;
pub mod cli;
pub mod controller;
pub mod errors;
pub mod manifest;
pub mod plan;
pub mod scheduler;
pub mod server;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod telemetry;
