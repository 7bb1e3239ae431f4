//! The object store: the `Store` trait (kept free of backend types), the watch log, and the
//! redb backend. Objects are Kubernetes-shaped JSON keyed by kind/namespace/name; the store
//! assigns uid, resourceVersion (global, monotonic), creationTimestamp and generation
//! (bumped only when `spec` changes), and keeps `status` apart from the rest.

pub mod etcd;
pub mod memory;
pub mod owners;
pub mod recording;
pub mod redb;
pub mod watch;

use crate::api::{Kind, ObjectKey};
use serde_json::Value;

pub use watch::{Watch, WatchEvent, WatchEventType};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    #[error(
        "{key} was changed by someone else (expected resourceVersion {expected}, found {found})"
    )]
    Conflict {
        key: String,
        expected: u64,
        found: u64,
    },
    #[error("resourceVersion {requested} is too old (oldest available is {oldest}); list again")]
    Gone { requested: u64, oldest: u64 },
    #[error("invalid object: {reason}")]
    Invalid { reason: String },
    #[error("store at {path}: {reason}")]
    Backend { path: String, reason: String },
}

/// One write in a transaction. A transaction is all-or-nothing.
#[derive(Debug, Clone)]
pub enum Op {
    /// Creates an object; fails with `AlreadyExists` when the key is taken.
    Create(Value),
    /// Creates or replaces an object's metadata and spec. The stored `status` is kept (the
    /// body's status is ignored for an existing object); `generation` is bumped when `spec`
    /// differs; uid and creationTimestamp are kept. `expect_rv` guards against lost updates.
    Put {
        object: Value,
        expect_rv: Option<u64>,
    },
    /// Replaces only the `status` of an existing object; the generation is not bumped.
    PutStatus {
        key: ObjectKey,
        status: Value,
        expect_rv: Option<u64>,
    },
    /// Deletes an object; deleting a missing object is `NotFound`.
    Delete {
        key: ObjectKey,
        expect_rv: Option<u64>,
    },
}

/// The result of a committed transaction.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The resourceVersion of the transaction (every object it wrote carries it).
    pub resource_version: u64,
    /// The objects as stored after each op (for a delete, the last state), in op order.
    pub objects: Vec<Value>,
}

/// Told the outcome of a transaction handed to `Store::submit`. Called on the store's
/// committing thread: it must not block (send it on a channel).
pub type CommitDone = Box<dyn FnOnce(Result<Committed, StoreError>) + Send>;

/// `Store::list` of a store that implements `visit`: the visited objects, collected.
pub(crate) fn list_by_visit(
    store: &dyn Store,
    kind: Kind,
    namespace: Option<&str>,
) -> Result<(Vec<Value>, u64), StoreError> {
    let mut items = Vec::new();
    let rv = store.visit(kind, namespace, &mut |o| items.push(o))?;
    Ok((items, rv))
}

/// The object store. Implementations: `redb::RedbStore` (embedded), `etcd::EtcdStore`.
pub trait Store: Send + Sync {
    /// One object, or `None`.
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError>;
    /// All objects of a kind (in one namespace, or all when `None`), sorted by key, and the
    /// resourceVersion the list is consistent with (to start a watch from).
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError>;
    /// Calls `each` with every object of a kind (in one namespace, or all when `None`), one
    /// at a time in key order, and returns the resourceVersion the visit is consistent with.
    /// For a pass over many objects that keeps little of each (the Event TTL collector):
    /// `list` holds all of them parsed at once, a few KiB of JSON tree per object. `each`
    /// must not call the store: an implementation may hold a read transaction meanwhile.
    /// The default lists and hands the objects over.
    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        let (objects, rv) = self.list(kind, namespace)?;
        objects.into_iter().for_each(each);
        Ok(rv)
    }
    /// Applies the ops atomically: every op or none. The whole transaction gets one new
    /// resourceVersion. An empty transaction is a no-op returning the current version.
    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError>;
    /// Hands the transaction to the store's own committing thread and returns at once;
    /// `done` is called with the outcome `commit` would have returned. A store without such
    /// a thread gives both back (the default), and the caller runs `commit` on a thread that
    /// may block. The API server uses this so that a request waiting for its fsync does not
    /// hold a thread.
    fn submit(&self, ops: Vec<Op>, done: CommitDone) -> Result<(), (Vec<Op>, CommitDone)> {
        Err((ops, done))
    }
    /// Changes after `from_rv` (exclusive), in order; `Gone` if they are no longer kept.
    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError>;
    /// The newest resourceVersion.
    fn current_rv(&self) -> u64;

    /// Objects of `kind` in `namespace` whose controlling ownerReference has uid `owner_uid`;
    /// with `owner_uid` empty, those with no controller at all (orphans). The default reads
    /// the whole namespace; `owners::OwnerIndex` answers from an index kept from the watch.
    fn list_owned(
        &self,
        kind: Kind,
        namespace: &str,
        owner_uid: &str,
    ) -> Result<Vec<Value>, StoreError> {
        let (objects, _) = self.list(kind, Some(namespace))?;
        Ok(objects
            .into_iter()
            .filter(|o| {
                crate::api::pod::controller_of(o).map_or("", |(_, _, uid)| uid) == owner_uid
            })
            .collect())
    }
}
