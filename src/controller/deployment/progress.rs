//! The Progressing and Available conditions and the progress deadline (Kubernetes'
//! progress.go and the condition helpers of deployment_util.go). The decisions are pure
//! functions of statuses and times; `Rollout` only applies them.

use super::{Rollout, until};
use serde_json::{Value, json};
use std::time::Duration;

pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";
pub const REASON_NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const REASON_FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const REASON_RS_UPDATED: &str = "ReplicaSetUpdated";
pub const REASON_NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const REASON_TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const REASON_PAUSED: &str = "DeploymentPaused";
pub const REASON_RESUMED: &str = "DeploymentResumed";
pub const REASON_MIN_AVAILABLE: &str = "MinimumReplicasAvailable";
pub const REASON_MIN_UNAVAILABLE: &str = "MinimumReplicasUnavailable";

/// The replica counts of a Deployment status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusCounts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub observed_generation: i64,
}

impl StatusCounts {
    pub fn of(status: &Value) -> StatusCounts {
        let int = |f: &str| super::int_field(status, &format!("/{f}"));
        StatusCounts {
            replicas: int("replicas"),
            updated: int("updatedReplicas"),
            ready: int("readyReplicas"),
            available: int("availableReplicas"),
            observed_generation: status
                .get("observedGeneration")
                .and_then(Value::as_i64)
                .unwrap_or(0),
        }
    }
}

/// Every replica is updated and available, and the latest spec has been seen
/// (Kubernetes' DeploymentComplete).
pub fn is_complete(replicas: i32, generation: i64, status: StatusCounts) -> bool {
    status.updated == replicas
        && status.replicas == replicas
        && status.available == replicas
        && status.observed_generation >= generation
}

/// The rollout moved since the last status: more updated, fewer old, more ready or more
/// available replicas (Kubernetes' DeploymentProgressing).
pub fn has_progressed(before: StatusCounts, after: StatusCounts) -> bool {
    after.updated > before.updated
        || after.replicas - after.updated < before.replicas - before.updated
        || after.ready > before.ready
        || after.available > before.available
}

/// When the Progressing condition runs out of time: its last update plus the deadline;
/// `None` when it cannot time out (none yet, already timed out, or complete).
pub fn deadline_of(progressing: Option<&Value>, deadline_seconds: i64) -> Option<jiff::Timestamp> {
    let cond = progressing?;
    let reason = cond.get("reason").and_then(Value::as_str);
    if matches!(
        reason,
        Some(REASON_TIMED_OUT) | Some(REASON_NEW_RS_AVAILABLE)
    ) {
        return None;
    }
    let from: jiff::Timestamp = cond.get("lastUpdateTime")?.as_str()?.parse().ok()?;
    from.checked_add(jiff::SignedDuration::from_secs(deadline_seconds))
        .ok()
}

/// The rollout made no progress for the deadline (Kubernetes' DeploymentTimedOut).
pub fn has_timed_out(
    progressing: Option<&Value>,
    deadline_seconds: i64,
    now: jiff::Timestamp,
) -> bool {
    if progressing
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        == Some(REASON_TIMED_OUT)
    {
        return true;
    }
    deadline_of(progressing, deadline_seconds).is_some_and(|deadline| deadline < now)
}

/// A condition of a status by type.
pub fn condition<'s>(status: &'s Value, kind: &str) -> Option<&'s Value> {
    status
        .get("conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

pub fn remove_condition(status: &mut Value, kind: &str) {
    if let Some(Value::Array(conds)) = status.get_mut("conditions") {
        conds.retain(|c| c.get("type").and_then(Value::as_str) != Some(kind));
    }
}

/// Sets a condition as Kubernetes' SetDeploymentCondition does: the same status and reason
/// change nothing (not even the times, so that a stalled rollout keeps its last update); the
/// same status keeps the transition time.
pub fn set_condition(status: &mut Value, mut cond: Value) {
    let kind = cond
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(current) = condition(status, &kind) {
        let same = |f: &str| current.get(f) == cond.get(f);
        if same("status") && same("reason") {
            return;
        }
        if same("status")
            && let Some(t) = current.get("lastTransitionTime")
        {
            cond["lastTransitionTime"] = t.clone();
        }
    }
    remove_condition(status, &kind);
    if let Some(obj) = status.as_object_mut() {
        let conds = obj.entry("conditions").or_insert_with(|| json!([]));
        if let Some(conds) = conds.as_array_mut() {
            conds.push(cond);
        }
    }
}

impl Rollout<'_> {
    pub(super) fn new_condition(
        &self,
        kind: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) -> Value {
        let now = self.now_rfc3339();
        json!({"type": kind, "status": status, "lastUpdateTime": now,
            "lastTransitionTime": now, "reason": reason, "message": message})
    }

    /// Progressing=Unknown DeploymentPaused while paused, DeploymentResumed once resumed; a
    /// timed-out rollout keeps its condition.
    pub(super) fn check_paused_conditions(&mut self) {
        if self.spec.progress_deadline_seconds.is_none() {
            return;
        }
        let reason = condition(&self.status, PROGRESSING)
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if reason.as_deref() == Some(REASON_TIMED_OUT) {
            return;
        }
        let paused_recorded = reason.as_deref() == Some(REASON_PAUSED);
        let cond = if self.spec.paused && !paused_recorded {
            self.new_condition(
                PROGRESSING,
                "Unknown",
                REASON_PAUSED,
                "Deployment is paused",
            )
        } else if !self.spec.paused && paused_recorded {
            self.new_condition(
                PROGRESSING,
                "Unknown",
                REASON_RESUMED,
                "Deployment is resumed",
            )
        } else {
            return;
        };
        set_condition(&mut self.status, cond);
    }

    /// The status counts and the Progressing condition after a rollout step (Kubernetes'
    /// syncRolloutStatus); returns when to look again for the progress deadline.
    pub(super) fn sync_rollout_status(&mut self) -> Option<Duration> {
        let before = StatusCounts::of(&self.status);
        let mut status = self.calculate_status();
        let Some(deadline) = self.spec.progress_deadline_seconds else {
            remove_condition(&mut status, PROGRESSING);
            self.status = status;
            return None;
        };
        let after = StatusCounts::of(&status);
        let current = condition(&status, PROGRESSING).cloned();
        let current_reason = current
            .as_ref()
            .and_then(|c| c.get("reason"))
            .and_then(Value::as_str);
        let already_complete =
            after.replicas == after.updated && current_reason == Some(REASON_NEW_RS_AVAILABLE);
        let generation = self
            .deployment
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let subject = match &self.new_rs {
            Some(name) => format!("ReplicaSet \"{name}\""),
            None => format!("Deployment \"{}\"", self.key.name),
        };
        if !already_complete {
            if is_complete(self.spec.replicas, generation, after) {
                let cond = self.new_condition(
                    PROGRESSING,
                    "True",
                    REASON_NEW_RS_AVAILABLE,
                    &format!("{subject} has successfully progressed."),
                );
                set_condition(&mut status, cond);
            } else if has_progressed(before, after) {
                let mut cond = self.new_condition(
                    PROGRESSING,
                    "True",
                    REASON_RS_UPDATED,
                    &format!("{subject} is progressing."),
                );
                // Progress renews the update time (the deadline) but is no transition.
                if let Some(c) = &current
                    && c.get("status").and_then(Value::as_str) == Some("True")
                    && let Some(t) = c.get("lastTransitionTime")
                {
                    cond["lastTransitionTime"] = t.clone();
                }
                remove_condition(&mut status, PROGRESSING);
                set_condition(&mut status, cond);
            } else if has_timed_out(current.as_ref(), deadline, self.now()) {
                let cond = self.new_condition(
                    PROGRESSING,
                    "False",
                    REASON_TIMED_OUT,
                    &format!("{subject} has timed out progressing."),
                );
                set_condition(&mut status, cond);
            }
        }
        self.status = status;
        if is_complete(self.spec.replicas, generation, after) {
            return None;
        }
        deadline_of(condition(&self.status, PROGRESSING), deadline).map(|d| until(d, self.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(replicas: i32, updated: i32, ready: i32, available: i32) -> StatusCounts {
        StatusCounts {
            replicas,
            updated,
            ready,
            available,
            observed_generation: 1,
        }
    }

    #[test]
    fn completeness_and_progress() {
        assert!(is_complete(3, 1, counts(3, 3, 3, 3)));
        assert!(
            !is_complete(3, 2, counts(3, 3, 3, 3)),
            "generation not observed"
        );
        assert!(!is_complete(3, 1, counts(4, 3, 3, 3)), "an old pod remains");
        assert!(has_progressed(counts(3, 0, 3, 3), counts(4, 1, 3, 3)));
        assert!(
            has_progressed(counts(4, 1, 3, 3), counts(3, 1, 3, 3)),
            "one old pod fewer"
        );
        assert!(!has_progressed(counts(4, 1, 3, 3), counts(4, 1, 3, 3)));
    }

    #[test]
    fn deadline_runs_from_the_last_update() {
        let cond = json!({"type": PROGRESSING, "status": "True", "reason": REASON_RS_UPDATED,
            "lastUpdateTime": "2026-01-01T00:00:00Z"});
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        assert!(!has_timed_out(Some(&cond), 600, t("2026-01-01T00:10:00Z")));
        assert!(has_timed_out(Some(&cond), 600, t("2026-01-01T00:10:01Z")));
        assert!(!has_timed_out(None, 600, t("2030-01-01T00:00:00Z")));
        let done = json!({"type": PROGRESSING, "reason": REASON_NEW_RS_AVAILABLE, "lastUpdateTime": "2026-01-01T00:00:00Z"});
        assert!(!has_timed_out(Some(&done), 600, t("2030-01-01T00:00:00Z")));
    }

    #[test]
    fn conditions_keep_times_unless_they_change() {
        let mut status = json!({});
        let c1 = json!({"type": "Available", "status": "True", "reason": "A", "lastUpdateTime": "t1", "lastTransitionTime": "t1"});
        set_condition(&mut status, c1.clone());
        let again = json!({"type": "Available", "status": "True", "reason": "A", "lastUpdateTime": "t2", "lastTransitionTime": "t2"});
        set_condition(&mut status, again);
        assert_eq!(condition(&status, "Available"), Some(&c1));
        let other = json!({"type": "Available", "status": "True", "reason": "B", "lastUpdateTime": "t3", "lastTransitionTime": "t3"});
        set_condition(&mut status, other);
        let now = condition(&status, "Available").unwrap();
        assert_eq!(
            (now["reason"].as_str(), now["lastTransitionTime"].as_str()),
            (Some("B"), Some("t1"))
        );
        assert_eq!(status["conditions"].as_array().unwrap().len(), 1);
    }
}
