//! A store that records every committed op, for controller tests that compare ordered action
//! lists (as Kubernetes' controller tests do).

use super::{Committed, Op, Store, StoreError, Watch};
use crate::api::{Kind, ObjectKey};
use serde_json::Value;
use std::sync::{Arc, Mutex};

pub struct RecordingStore {
    inner: Arc<dyn Store>,
    log: Mutex<Vec<Op>>,
}

impl RecordingStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        RecordingStore {
            inner,
            log: Mutex::new(Vec::new()),
        }
    }

    /// The ops committed since the last call, in order.
    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The ops since the last call as short lines: `create ReplicaSet web-5d8f7c9b6`,
    /// `update ReplicaSet web-5d8f7c9b6`, `status Deployment web`, `delete Pod web-5d8f7c9b6-x2x4k`.
    pub fn take_lines(&self) -> Vec<String> {
        self.take()
            .iter()
            .map(|op| match op {
                Op::Create(o) => format!("create {} {}", kind_of(o), name_of(o)),
                Op::Put { object, .. } => format!("put {} {}", kind_of(object), name_of(object)),
                Op::PutStatus { key, .. } => format!("status {} {}", key.kind, key.name),
                Op::Delete { key, .. } => format!("delete {} {}", key.kind, key.name),
            })
            .collect()
    }
}

fn kind_of(o: &Value) -> &str {
    o.get("kind").and_then(Value::as_str).unwrap_or("?")
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?")
}

impl Store for RecordingStore {
    fn get(&self, key: &ObjectKey) -> Result<Option<Value>, StoreError> {
        self.inner.get(key)
    }
    fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<(Vec<Value>, u64), StoreError> {
        self.inner.list(kind, namespace)
    }
    fn visit(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        each: &mut dyn FnMut(Value),
    ) -> Result<u64, StoreError> {
        self.inner.visit(kind, namespace, each)
    }
    fn commit(&self, ops: Vec<Op>) -> Result<Committed, StoreError> {
        let committed = self.inner.commit(ops.clone())?;
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ops);
        Ok(committed)
    }
    fn watch(&self, from_rv: u64) -> Result<Watch, StoreError> {
        self.inner.watch(from_rv)
    }
    fn current_rv(&self) -> u64 {
        self.inner.current_rv()
    }
}
