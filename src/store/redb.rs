//! The embedded store: one redb file under the state directory.
//!
//! Two tables: `objects` (storage key `Kind/namespace/name` -> object JSON) and `meta` (the
//! current resourceVersion). Every store transaction is committed with immediate durability
//! (fsynced before `commit` returns), so a crash leaves either the old or the new state.
//!
//! Group commit: an fsync takes milliseconds (7 ms on the project's VM), and hundreds of nodes
//! each write their status every few seconds. Transactions that arrive while one redb write
//! transaction is being committed wait, and the next one carries them all: each keeps its own
//! resourceVersion and its own all-or-nothing outcome (a failed one changes nothing and the
//! others go ahead), and one fsync makes them all durable before any of them returns.
//!
//! One committer thread per store writes the groups. A caller hands it its transaction and
//! is told the outcome (`Store::submit`): the API server awaits it without holding a thread,
//! so a slow fsync under load no longer makes the runtime start a blocking thread for every
//! waiting request (serve went from ~40 to 120+ threads in such stalls, and its memory with
//! them). `commit` waits for the same outcome on the caller's thread.

use super::memory::{Staging, apply_transaction, decode, key_range};
use super::watch::{WatchLimits, WatchLog};
use super::{CommitDone, Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESOURCE_VERSION: &str = "resourceVersion";

pub struct RedbStore {
    inner: Arc<Inner>,
    /// The committer thread; joined on drop, after it has committed what was queued.
    committer: Option<JoinHandle<()>>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    resource_version: AtomicU64,
    log: WatchLog,
    /// Transactions waiting for the committer.
    queue: Mutex<Queue>,
    /// Signalled when a transaction is queued or the store closes.
    queued: Condvar,
}

/// What waits for the committer (see the module's documentation).
#[derive(Default)]
struct Queue {
    waiting: Vec<(Vec<Op>, CommitDone)>,
    /// The store is being dropped: the committer commits what is queued, then ends.
    closing: bool,
}

/// The page cache of the redb file.
const CACHE_BYTES: usize = 16 << 20;

impl RedbStore {
    /// Opens the store file at `path`, creating it (and its directory) when missing.
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        Self::open_with_watch_limits(path, WatchLimits::default())
    }

    /// Like `open`, with a watch log keeping the most recent events within `limits`.
    pub fn open_with_watch_limits(
        path: &Path,
        limits: WatchLimits,
    ) -> Result<RedbStore, StoreError> {
        let fail = |e: &dyn Display| backend(path, e);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| fail(&e))?;
        }
        // redb's default page cache is 1 GiB; objects are small and mostly read through
        // lists, so a small cache keeps serve's memory bounded at no visible cost.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| fail(&e))?;
        // Create the tables up front so that readers never meet a missing table.
        let tx = db.begin_write().map_err(|e| fail(&e))?;
        let rv = {
            tx.open_table(OBJECTS).map_err(|e| fail(&e))?;
            let meta = tx.open_table(META).map_err(|e| fail(&e))?;
            let rv = meta
                .get(RESOURCE_VERSION)
                .map_err(|e| fail(&e))?
                .map(|g| g.value());
            rv.unwrap_or(0)
        };
        tx.commit().map_err(|e| fail(&e))?;
        let inner = Arc::new(Inner {
            db,
            path: path.to_path_buf(),
            resource_version: AtomicU64::new(rv),
            log: WatchLog::new(rv, limits),
            queue: Mutex::new(Queue::default()),
            queued: Condvar::new(),
        });
        let committer = std::thread::Builder::new()
            .name("store-commit".to_string())
            .spawn({
                let inner = Arc::clone(&inner);
                move || inner.run_committer()
            })
            .map_err(|e| fail(&format!("starting the committer thread: {e}")))?;
        Ok(RedbStore {
            inner,
            committer: Some(committer),
        })
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.inner.lock_queue().closing = true;
        self.inner.queued.notify_all();
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Inner {
    fn fail(&self, e: impl Display) -> StoreError {
        backend(&self.path, &e)
    }
}

fn backend(path: &Path, e: &dyn Display) -> StoreError {
    StoreError::Backend {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// One store transaction's writes over the objects table of a group's write transaction,
/// kept aside until the store transaction has succeeded whole.
struct TableOverlay<'a, 't> {
    table: &'a Table<'t, &'static str, &'static [u8]>,
    written: HashMap<String, Option<Arc<[u8]>>>,
    path: &'a Path,
}

impl Staging for TableOverlay<'_, '_> {
    fn read(&mut self, key: &str) -> Result<Option<Value>, StoreError> {
        if let Some(written) = self.written.get(key) {
            return written.as_ref().map(|b| decode(key, b)).transpose();
        }
        let found = self.table.get(key).map_err(|e| backend(self.path, &e))?;
        found.map(|bytes| decode(key, bytes.value())).transpose()
    }

    fn write(&mut self, key: &str, encoded: Option<Arc<[u8]>>) -> Result<(), StoreError> {
        self.written.insert(key.to_string(), encoded);
        Ok(())
    }
}

impl Inner {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The committer: takes everything queued, commits it as one group, tells each caller
    /// its outcome; sleeps while nothing is queued; ends once the store closes and the queue
    /// is empty.
    fn run_committer(&self) {
        // Should this thread end early (it does not panic, but a callback might), every
        // transaction still queued fails instead of waiting forever.
        let _fail_rest = FailQueuedOnExit(self);
        let mut queue = self.lock_queue();
        loop {
            if !queue.waiting.is_empty() {
                let batch = std::mem::take(&mut queue.waiting);
                drop(queue);
                let (ops, dones): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let outcomes = self.commit_group(ops);
                for (done, outcome) in dones.into_iter().zip(outcomes) {
                    done(outcome);
                }
                queue = self.lock_queue();
                continue;
            }
            if queue.closing {
                return;
            }
            queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn submit(&self, ops: Vec<Op>, done: CommitDone) {
        let mut queue = self.lock_queue();
        queue.waiting.push((ops, done));
        drop(queue);
        self.queued.notify_one();
    }

    /// Commits a group of store transactions in one redb write transaction; returns each
    /// one's outcome, in order. Runs on the committer thread only, so the watch log receives
    /// commits in resourceVersion order.
    fn commit_group(&self, group: Vec<Vec<Op>>) -> Vec<Result<Committed, StoreError>> {
        let count = group.len();
        // A failure of the group fails each of its transactions (none was kept).
        let all_fail = |e: StoreError| -> Vec<Result<Committed, StoreError>> {
            let reason = match e {
                StoreError::Backend { reason, .. } => reason,
                other => other.to_string(),
            };
            let path = self.path.display().to_string();
            (0..count)
                .map(|_| {
                    Err(StoreError::Backend {
                        path: path.clone(),
                        reason: reason.clone(),
                    })
                })
                .collect()
        };
        let mut tx = match self.db.begin_write() {
            Ok(tx) => tx,
            Err(e) => return all_fail(self.fail(e)),
        };
        if let Err(e) = tx.set_durability(Durability::Immediate) {
            return all_fail(self.fail(e));
        }
        let mut outcomes = Vec::with_capacity(group.len());
        let mut logged = Vec::new();
        let applied = (|| -> Result<u64, StoreError> {
            let mut meta = tx.open_table(META).map_err(|e| self.fail(e))?;
            let mut objects = tx.open_table(OBJECTS).map_err(|e| self.fail(e))?;
            let mut rv = meta
                .get(RESOURCE_VERSION)
                .map_err(|e| self.fail(e))?
                .map(|g| g.value())
                .unwrap_or(0);
            for ops in group {
                let mut overlay = TableOverlay {
                    table: &objects,
                    written: HashMap::new(),
                    path: &self.path,
                };
                match apply_transaction(ops, rv + 1, &mut overlay) {
                    Ok((committed, events)) => {
                        for (key, bytes) in overlay.written {
                            let result = match bytes {
                                Some(bytes) => objects.insert(key.as_str(), &*bytes).map(drop),
                                None => objects.remove(key.as_str()).map(drop),
                            };
                            result.map_err(|e| self.fail(e))?;
                        }
                        rv += 1;
                        logged.push(events);
                        outcomes.push(Ok(committed));
                    }
                    // This one changes nothing; the others go ahead.
                    Err(e) => outcomes.push(Err(e)),
                }
            }
            meta.insert(RESOURCE_VERSION, rv)
                .map_err(|e| self.fail(e))?;
            Ok(rv)
        })();
        let committed_rv = applied.and_then(|rv| {
            if logged.is_empty() {
                // Every transaction failed: nothing to make durable.
                return Ok(None);
            }
            tx.commit().map(|()| Some(rv)).map_err(|e| self.fail(e))
        });
        match committed_rv {
            Ok(Some(rv)) => {
                self.resource_version.store(rv, Ordering::Release);
                for events in logged {
                    self.log.append(events);
                }
                outcomes
            }
            Ok(None) => outcomes,
            Err(e) => all_fail(e),
        }
    }
}

impl Store for RedbStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let tx = self.inner.db.begin_read().map_err(|e| self.inner.fail(e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| self.inner.fail(e))?;
        let storage_key = key.storage_key();
        let found = table
            .get(storage_key.as_str())
            .map_err(|e| self.inner.fail(e))?;
        found
            .map(|bytes| decode(&storage_key, bytes.value()))
            .transpose()
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        super::list_by_visit(self, kind, namespace)
    }

    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        let tx = self.inner.db.begin_read().map_err(|e| self.inner.fail(e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| self.inner.fail(e))?;
        let meta = tx.open_table(META).map_err(|e| self.inner.fail(e))?;
        let rv = meta
            .get(RESOURCE_VERSION)
            .map_err(|e| self.inner.fail(e))?
            .map(|g| g.value());
        let (start, end) = key_range(kind, namespace);
        for entry in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.inner.fail(e))?
        {
            let (key, bytes) = entry.map_err(|e| self.inner.fail(e))?;
            each(decode(key.value(), bytes.value())?);
        }
        Ok(rv.unwrap_or(0))
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        if ops.is_empty() {
            return Ok(Committed {
                resource_version: self.current_rv(),
                objects: Vec::new(),
            });
        }
        let (tx, rx) = mpsc::sync_channel(1);
        self.inner.submit(
            ops,
            Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }),
        );
        rx.recv()
            .unwrap_or_else(|_| Err(self.inner.fail("the store's committer thread stopped")))
    }

    fn submit(&self, ops: Vec<Op>, done: CommitDone) -> Result<(), (Vec<Op>, CommitDone)> {
        if ops.is_empty() {
            done(self.commit(ops));
        } else {
            self.inner.submit(ops, done);
        }
        Ok(())
    }

    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.inner.log.subscribe(from_rv)
    }

    fn current_rv(&self) -> u64 {
        self.inner.resource_version.load(Ordering::Acquire)
    }
}

/// Fails every transaction still queued when the committer thread ends (see
/// `run_committer`), so that no caller waits forever.
struct FailQueuedOnExit<'a>(&'a Inner);

impl Drop for FailQueuedOnExit<'_> {
    fn drop(&mut self) {
        let waiting = std::mem::take(&mut self.0.lock_queue().waiting);
        for (_, done) in waiting {
            done(Err(self.0.fail("the store's committer thread stopped")));
        }
    }
}
