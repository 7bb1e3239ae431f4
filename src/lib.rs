//! tend: a GitOps deployment system with Kubernetes semantics and no Kubernetes cluster.
//!
//! The data flows one way, and the modules follow it:
//!
//! - [`source`]: a git repository or a directory -> revisions (commit id, message, files).
//! - [`manifest`]: YAML files -> validated, defaulted Kubernetes objects, errors with `file:line:column`.
//! - [`plan`]: desired objects vs applied objects -> create / update (JSON patch) / prune.
//! - [`store`]: the object store (`Store` trait; redb backend), resourceVersions, watches, revisions.
//! - [`controller`]: the reconcile loop that applies source revisions to the store, and allocation
//!   of ClusterIPs and NodePorts.
//! - [`server`]: the HTTP API (axum), bearer-token authentication, webhooks.
//! - [`cli`]: the command-line client (`get`, `describe`, `diff`), kubectl-style tables.
//! - [`api`]: the object model shared by all: kinds, keys, metadata helpers, selectors.

pub mod api;
pub mod bench;
pub mod cli;
pub mod controller;
pub mod manifest;
pub mod plan;
pub mod scheduler;
pub mod server;
pub mod source;
pub mod store;
pub mod telemetry;
