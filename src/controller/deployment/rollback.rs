//! Auto-revert, beyond Kubernetes (Nomad's `auto_revert`): a Deployment annotated
//! `tend.dev/auto-revert: "true"` whose rollout exceeds its progress deadline gets a commit on
//! its source restoring the template of its last good revision. Git stays the only source of
//! truth: the revert is a commit that the source controller then applies like any other, and
//! the rollback itself is the ordinary "template equals an old ReplicaSet" path.

use super::progress::{PROGRESSING, REASON_NEW_RS_AVAILABLE, REASON_TIMED_OUT, condition};
use super::{Rollout, annotations_mut};
use crate::api::{ObjectMeta, SOURCE_FILE_ANNOTATION};
use crate::controller::events;
use crate::controller::rollout::{self, template_without_hash};
use crate::controller::runtime::ReconcileError;
use crate::source::write::Edit;
use serde_json::Value;

/// On a Deployment: `"true"` turns auto-revert on.
pub const AUTO_REVERT_ANNOTATION: &str = "tend.dev/auto-revert";
/// On a ReplicaSet whose rollout timed out and was reverted: the revision it had then, so that
/// one failed template is reverted once (a later rollout of it, with a new revision, may be
/// reverted again).
pub const AUTO_REVERTED_ANNOTATION: &str = "tend.dev/auto-reverted";
/// On a ReplicaSet that once had all the Deployment's replicas available: a good revision.
pub const ROLLOUT_COMPLETE_ANNOTATION: &str = "tend.dev/rollout-complete";

/// The ReplicaSet to revert to, among the old ones: the highest revision that completed a
/// rollout, or else the highest revision below the failing one.
pub fn last_good_replica_set<'v>(old: &[&'v Value]) -> Option<&'v Value> {
    let completed = old
        .iter()
        .filter(|rs| rs.annotation(ROLLOUT_COMPLETE_ANNOTATION) == Some("true"))
        .max_by_key(|rs| rollout::revision_of(rs));
    completed
        .or_else(|| old.iter().max_by_key(|rs| rollout::revision_of(rs)))
        .copied()
}

impl Rollout<'_> {
    /// Marks the new ReplicaSet as good once its rollout completed.
    pub(super) fn mark_rollout_complete(&mut self) -> Result<(), ReconcileError> {
        let reason = condition(&self.status, PROGRESSING)
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str);
        if reason != Some(REASON_NEW_RS_AVAILABLE) {
            return Ok(());
        }
        let Some(mut rs) = self.new_replica_set().cloned() else {
            return Ok(());
        };
        if rs.annotation(ROLLOUT_COMPLETE_ANNOTATION) == Some("true") {
            return Ok(());
        }
        if let Some(ann) = annotations_mut(&mut rs) {
            ann.insert(ROLLOUT_COMPLETE_ANNOTATION.into(), Value::from("true"));
        }
        self.write_replica_set(rs)
    }

    pub(super) fn auto_revert_if_failed(&mut self) -> Result<(), ReconcileError> {
        if self.deployment.annotation(AUTO_REVERT_ANNOTATION) != Some("true") {
            return Ok(());
        }
        let Some(cond) = condition(&self.status, PROGRESSING) else {
            return Ok(());
        };
        if cond.get("reason").and_then(Value::as_str) != Some(REASON_TIMED_OUT) {
            return Ok(());
        }
        let reason = cond
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let Some(mut failed) = self.new_replica_set().cloned() else {
            return Ok(());
        };
        let failed_revision = rollout::revision_of(&failed).to_string();
        if failed.annotation(AUTO_REVERTED_ANNOTATION) == Some(failed_revision.as_str()) {
            return Ok(());
        }
        // Marked before the source is written: a revert commit must never be made twice for
        // one failure, even when a later write of this sync loses a race and is retried.
        if let Some(ann) = annotations_mut(&mut failed) {
            ann.insert(
                AUTO_REVERTED_ANNOTATION.into(),
                Value::from(failed_revision),
            );
        }
        self.write_replica_set(failed)?;

        let old = self.old_replica_sets();
        let Some(good) = last_good_replica_set(&old) else {
            self.record(
                events::WARNING,
                "AutoRevertFailed",
                &format!("Cannot auto-revert {}: no earlier revision", self.key),
            );
            return Ok(());
        };
        let revision = rollout::revision_of(good);
        let template = good
            .pointer("/spec/template")
            .map(template_without_hash)
            .unwrap_or(Value::Null);
        let message = format!(
            "Auto-revert {} to revision {revision}: {REASON_TIMED_OUT} ({reason})",
            self.key
        );
        let Some(file) = self.deployment.annotation(SOURCE_FILE_ANNOTATION) else {
            self.record(
                events::WARNING,
                "AutoRevertFailed",
                &format!("{message}: the deployment has no {SOURCE_FILE_ANNOTATION} annotation"),
            );
            return Ok(());
        };
        let Some(writer) = self.ctx.source_writer.clone() else {
            self.record(
                events::WARNING,
                "AutoRevertFailed",
                &format!("{message}: the source cannot be written (no source writer)"),
            );
            return Ok(());
        };
        match writer.edit(&self.key, file, &Edit::SetTemplate(template), &message) {
            Ok(written) => self.record(
                events::NORMAL,
                "AutoReverted",
                &format!("{message}: wrote {}", written.revision),
            ),
            Err(e) => self.record(
                events::WARNING,
                "AutoRevertFailed",
                &format!("{message}: {e}"),
            ),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rs(revision: &str, complete: bool) -> Value {
        let mut ann = json!({rollout::REVISION_ANNOTATION: revision});
        if complete {
            ann[ROLLOUT_COMPLETE_ANNOTATION] = json!("true");
        }
        json!({"metadata": {"name": format!("web-{revision}"), "annotations": ann}})
    }

    #[test]
    fn last_good_prefers_a_completed_revision() {
        let (r1, r2, r3) = (rs("1", true), rs("2", false), rs("3", true));
        assert_eq!(last_good_replica_set(&[&r1, &r2]), Some(&r1));
        assert_eq!(last_good_replica_set(&[&r1, &r2, &r3]), Some(&r3));
        let (a, b) = (rs("1", false), rs("2", false));
        assert_eq!(last_good_replica_set(&[&a, &b]), Some(&b));
        assert_eq!(last_good_replica_set(&[]), None);
    }
}
