//! The watch log shared by store backends: recent changes kept in memory, in resourceVersion
//! order, read by any number of watchers without per-watcher buffers (no event is dropped;
//! a watcher that falls behind the kept window gets `Gone` and lists again, as in Kubernetes).

use super::StoreError;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    Added,
    Modified,
    Deleted,
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub event_type: WatchEventType,
    /// The object after the change (for `Deleted`, its last state).
    pub object: Value,
    pub resource_version: u64,
}

/// A stream of changes after a resourceVersion.
pub struct Watch {
    _private: (),
}

impl Watch {
    /// The next change, waiting for one. `Gone` when the watcher fell out of the kept window.
    pub async fn next(&mut self) -> Result<WatchEvent, StoreError> {
        Err(StoreError::Invalid { reason: "watch not built yet".into() })
    }
}
