//! The embedded store: one redb file under the state directory.
//!
//! Two tables: `objects` (storage key `Kind/namespace/name` -> object JSON) and `meta` (the
//! current resourceVersion). A store transaction is one redb write transaction committed with
//! immediate durability, so a crash leaves either the old or the new state.

use super::memory::{Staging, apply_transaction, decode, key_range};
use super::watch::{WatchLimits, WatchLog};
use super::{Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use ::redb::{Database, Durability, ReadableDatabase, ReadableTable, Table, TableDefinition};
use serde_json::Value;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESOURCE_VERSION: &str = "resourceVersion";

pub struct RedbStore {
    db: Database,
    path: PathBuf,
    resource_version: AtomicU64,
    log: WatchLog,
    /// Held from the start of a write transaction until its events are in the watch log, so
    /// the log receives commits in resourceVersion order.
    commit_order: Mutex<()>,
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
        Ok(RedbStore {
            db,
            path: path.to_path_buf(),
            resource_version: AtomicU64::new(rv),
            log: WatchLog::new(rv, limits),
            commit_order: Mutex::new(()),
        })
    }

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

/// The objects table inside one write transaction.
struct TableStaging<'a, 't> {
    table: &'a mut Table<'t, &'static str, &'static [u8]>,
    path: &'a Path,
}

impl Staging for TableStaging<'_, '_> {
    fn read(&mut self, key: &str) -> Result<Option<Value>, StoreError> {
        let found = self.table.get(key).map_err(|e| backend(self.path, &e))?;
        found.map(|bytes| decode(key, bytes.value())).transpose()
    }

    fn write(&mut self, key: &str, encoded: Option<Arc<[u8]>>) -> Result<(), StoreError> {
        let result = match encoded {
            Some(bytes) => self.table.insert(key, &*bytes).map(drop),
            None => self.table.remove(key).map(drop),
        };
        result.map_err(|e| backend(self.path, &e))
    }
}

impl Store for RedbStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| self.fail(e))?;
        let storage_key = key.storage_key();
        let found = table.get(storage_key.as_str()).map_err(|e| self.fail(e))?;
        found
            .map(|bytes| decode(&storage_key, bytes.value()))
            .transpose()
    }

    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(OBJECTS).map_err(|e| self.fail(e))?;
        let meta = tx.open_table(META).map_err(|e| self.fail(e))?;
        let rv = meta
            .get(RESOURCE_VERSION)
            .map_err(|e| self.fail(e))?
            .map(|g| g.value());
        let (start, end) = key_range(kind, namespace);
        let mut items = Vec::new();
        for entry in table
            .range(start.as_str()..end.as_str())
            .map_err(|e| self.fail(e))?
        {
            let (key, bytes) = entry.map_err(|e| self.fail(e))?;
            items.push(decode(key.value(), bytes.value())?);
        }
        Ok((items, rv.unwrap_or(0)))
    }

    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        if ops.is_empty() {
            return Ok(Committed {
                resource_version: self.current_rv(),
                objects: Vec::new(),
            });
        }
        let _order = self.commit_order.lock().unwrap_or_else(|e| e.into_inner());
        let mut tx = self.db.begin_write().map_err(|e| self.fail(e))?;
        tx.set_durability(Durability::Immediate)
            .map_err(|e| self.fail(e))?;
        let applied = (|| {
            let mut meta = tx.open_table(META).map_err(|e| self.fail(e))?;
            let mut objects = tx.open_table(OBJECTS).map_err(|e| self.fail(e))?;
            let current = meta
                .get(RESOURCE_VERSION)
                .map_err(|e| self.fail(e))?
                .map(|g| g.value());
            let rv = current.unwrap_or(0) + 1;
            let mut staging = TableStaging {
                table: &mut objects,
                path: &self.path,
            };
            let applied = apply_transaction(ops, rv, &mut staging)?;
            meta.insert(RESOURCE_VERSION, rv)
                .map_err(|e| self.fail(e))?;
            Ok(applied)
        })();
        let (committed, events) = match applied {
            Ok(applied) => applied,
            Err(e) => {
                // Nothing of the transaction is kept (dropping it would abort it as well).
                if let Err(abort) = tx.abort() {
                    tracing::warn!(path = %self.path.display(), "aborting a store transaction: {abort}");
                }
                return Err(e);
            }
        };
        tx.commit().map_err(|e| self.fail(e))?;
        self.resource_version
            .store(committed.resource_version, Ordering::Release);
        self.log.append(events);
        Ok(committed)
    }

    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.log.subscribe(from_rv)
    }

    fn current_rv(&self) -> u64 {
        self.resource_version.load(Ordering::Acquire)
    }
}
