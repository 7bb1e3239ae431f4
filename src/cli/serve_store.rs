//! `tend serve --store`: which store the control plane opens.

use super::serve::ServeArgs;
use crate::store::Store;
use crate::store::etcd::EtcdStore;
use crate::store::redb::RedbStore;
use anyhow::{Context, bail};
use std::sync::Arc;

/// The store `--store` names: `redb` (the file `tend.redb` under `--state`, which must exist)
/// or `etcd://HOST:PORT[,HOST:PORT...]` (several control planes on one etcd).
pub fn open_store(args: &ServeArgs) -> anyhow::Result<Arc<dyn Store>> {
    if args.store == "redb" {
        let db = args.state.join("tend.redb");
        let store =
            RedbStore::open(&db).with_context(|| format!("opening the store {}", db.display()))?;
        return Ok(Arc::new(store));
    }
    if args.store.starts_with("etcd://") {
        let store = EtcdStore::open(&args.store).context("opening the store")?;
        return Ok(Arc::new(store));
    }
    bail!(
        "--store {:?}: expected redb or etcd://HOST:PORT[,HOST:PORT...]",
        args.store
    )
}
