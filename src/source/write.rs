//! Writing to the source: CLI mutations (`scale`, `rollout undo|pause|resume`) and auto-revert
//! are commits on the watched branch (pushed for remotes) or rewrites of a directory's file,
//! never hidden overrides. The watcher then applies them like any other change.

use super::SourceError;
use crate::api::ObjectKey;
use serde_json::Value;

/// A change to one object's manifest, made in place so that the rest of the file (comments,
/// order, other documents) stays as it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// `spec.replicas`.
    SetReplicas(i32),
    /// `spec.paused` (`false` removes the field or sets it false).
    SetPaused(bool),
    /// `spec.template`: the pod template of an earlier revision (rollback, auto-revert).
    SetTemplate(Value),
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new commit id (git), or the new content hash (directory).
    pub revision: String,
}

/// Edits the source file holding an object and records the change.
pub trait SourceWriter: Send + Sync {
    /// Applies `edit` to the document of `key` in `file` (relative to the source root, as in
    /// the `tend.dev/source-file` annotation) and commits with `message` (git) or rewrites the
    /// file (directory). Fails clearly, changing nothing, when the work tree is dirty, the
    /// object is not in the file, or a remote refuses the push.
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Written, SourceError>;
}
