//! Rollout commands as commits: `POST .../deployments/{name}/{scale|pause|resume|rollback}`
//! edits the Deployment's manifest in its source file (annotation `tend.dev/source-file`)
//! through the configured [`SourceWriter`] and answers with the new revision. The source
//! watcher then applies that revision like any other change.
//!
//! The choice of what to write (which ReplicaSet, which template, which message) is made by
//! pure functions over the objects; only [`handle`] touches the store and the writer.

use super::{ApiError, Shared, limits};
use crate::api::{Kind, ObjectKey};
use crate::source::write::{Edit, SourceWriter, WriteFailure};
use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
pub const SOURCE_FILE_ANNOTATION: &str = "tend.dev/source-file";
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The route this module serves (registered in [`super::router_with_limits`]).
pub const ROUTE: &str = "/apis/tend.dev/v1/namespaces/{ns}/deployments/{name}/{action}";

/// The revision number of a ReplicaSet (or Deployment), from its annotation.
pub fn revision_of(object: &Value) -> Option<i64> {
    annotation(object, REVISION_ANNOTATION)?.trim().parse().ok()
}

fn annotation<'v>(object: &'v Value, name: &str) -> Option<&'v str> {
    object.pointer("/metadata/annotations")?.get(name)?.as_str()
}

/// The ReplicaSets whose ownerReferences name `deployment`, sorted by revision (those
/// without one first).
pub fn owned_replica_sets<'a>(deployment: &Value, replica_sets: &'a [Value]) -> Vec<&'a Value> {
    let name = deployment.pointer("/metadata/name").and_then(Value::as_str);
    let uid = deployment.pointer("/metadata/uid").and_then(Value::as_str);
    let mut owned: Vec<&Value> = replica_sets
        .iter()
        .filter(|rs| {
            rs.pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| {
                    refs.iter().any(|r| {
                        r.get("kind").and_then(Value::as_str) == Some("Deployment")
                            && r.get("name").and_then(Value::as_str) == name
                            && match (r.get("uid").and_then(Value::as_str), uid) {
                                (Some(a), Some(b)) => a == b,
                                _ => true,
                            }
                    })
                })
        })
        .collect();
    owned.sort_by_key(|rs| revision_of(rs).unwrap_or(-1));
    owned
}

/// What a rollback writes.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackTarget {
    pub revision: i64,
    /// The pod template without the `pod-template-hash` label.
    pub template: Value,
    /// The short commit of that revision (first word of its change-cause), if known.
    pub commit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RollbackError {
    #[error("deployment {deployment:?} has no revision {revision}")]
    NoSuchRevision { deployment: String, revision: i64 },
    #[error("deployment {deployment:?} has no previous revision to roll back to")]
    NoPrevious { deployment: String },
}

/// The revision to roll back to: `to_revision`, or with 0 the newest revision before the
/// current one (the highest).
///
/// Example: revisions 1, 2, 3 -> `0` picks 2; `1` picks 1; `7` is an error.
pub fn rollback_target(
    deployment_name: &str,
    owned: &[&Value],
    to_revision: i64,
) -> Result<RollbackTarget, RollbackError> {
    let mut revisions: Vec<(i64, &Value)> = owned
        .iter()
        .filter_map(|rs| revision_of(rs).map(|r| (r, *rs)))
        .collect();
    revisions.sort_by_key(|(r, _)| *r);
    let chosen = if to_revision > 0 {
        revisions
            .iter()
            .find(|(r, _)| *r == to_revision)
            .ok_or(RollbackError::NoSuchRevision {
                deployment: deployment_name.to_string(),
                revision: to_revision,
            })?
    } else {
        let len = revisions.len();
        revisions
            .get(len.wrapping_sub(2))
            .filter(|_| len >= 2)
            .ok_or(RollbackError::NoPrevious {
                deployment: deployment_name.to_string(),
            })?
    };
    let (revision, rs) = *chosen;
    let mut template = rs
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(Value::Object(labels)) = template.pointer_mut("/metadata/labels") {
        labels.remove(TEMPLATE_HASH_LABEL);
    }
    let commit = annotation(rs, CHANGE_CAUSE_ANNOTATION)
        .and_then(|c| c.split_whitespace().next())
        .map(str::to_string);
    Ok(RollbackTarget {
        revision,
        template,
        commit,
    })
}

/// The edit and commit message of one command; `body` is the request's JSON.
pub fn plan_command(
    action: &str,
    name: &str,
    body: &Value,
    owned: &[&Value],
) -> Result<(Edit, String), ApiError> {
    match action {
        "scale" => {
            let replicas = body
                .get("replicas")
                .or_else(|| body.pointer("/spec/replicas"))
                .and_then(Value::as_i64)
                .filter(|n| (0..=i64::from(i32::MAX)).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request("give {\"replicas\": N} with N a whole number >= 0")
                })?;
            let replicas = i32::try_from(replicas)
                .map_err(|_| ApiError::bad_request("replicas is too large"))?;
            Ok((
                Edit::SetReplicas(replicas),
                format!("Scale deployment/{name} to {replicas} replicas"),
            ))
        }
        "pause" => Ok((
            Edit::SetPaused(true),
            format!("Pause rollout of deployment/{name}"),
        )),
        "resume" => Ok((
            Edit::SetPaused(false),
            format!("Resume rollout of deployment/{name}"),
        )),
        "rollback" => {
            let to = match body.get("toRevision") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::bad_request("toRevision must be a whole number >= 0")
                })?,
            };
            let target = rollback_target(name, owned, to).map_err(|e| match e {
                RollbackError::NoSuchRevision { .. } => ApiError::not_found(e.to_string()),
                RollbackError::NoPrevious { .. } => ApiError::bad_request(e.to_string()),
            })?;
            let commit = target.commit.as_deref().unwrap_or("unknown commit");
            Ok((
                Edit::SetTemplate(target.template),
                format!(
                    "Roll back deployment/{name} to revision {} ({commit})",
                    target.revision
                ),
            ))
        }
        other => Err(ApiError::not_found(format!(
            "unknown deployment subresource {other:?} (use scale, pause, resume or rollback)"
        ))),
    }
}

/// `POST /apis/tend.dev/v1/namespaces/{ns}/deployments/{name}/{action}`.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    run(&shared, &namespace, &name, &action, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn run(
    shared: &Shared,
    namespace: &str,
    name: &str,
    action: &str,
    req: Request,
) -> Result<Response, ApiError> {
    super::admin_only(shared, req.headers(), "change deployments")?;
    if req.method() != axum::http::Method::POST {
        return Err(ApiError::method_not_allowed(
            req.method().as_str(),
            req.uri().path(),
        ));
    }
    let body = limits::read_body(req.into_body(), shared.limits.max_body_bytes).await?;
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?
    };
    let Some(writer) = shared.api.source_writer.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "the source is not writable: this server was started without a writable source",
        ));
    };
    let key = ObjectKey::new(Kind::Deployment, namespace, name);
    let ns = namespace.to_string();
    let (deployment, replica_sets) = super::objects::blocking(&shared.api.store, {
        let key = key.clone();
        move |s| {
            let deployment = s.get(&key)?;
            let (replica_sets, _) = s.list(Kind::ReplicaSet, Some(&ns))?;
            Ok((deployment, replica_sets))
        }
    })
    .await?;
    let deployment = deployment
        .ok_or_else(|| ApiError::not_found(format!("deployments.apps {name:?} not found")))?;
    let file = annotation(&deployment, SOURCE_FILE_ANNOTATION)
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "deployment {name:?} has no {SOURCE_FILE_ANNOTATION} annotation: it did not come \
                 from the source, so there is no file to edit"
            ))
        })?;
    let owned = owned_replica_sets(&deployment, &replica_sets);
    let (edit, message) = plan_command(action, name, &body, &owned)?;
    let written = write(writer, key, file, edit, message.clone()).await?;
    // Ask the source to pick the commit up now rather than at the next poll.
    let _ = shared.api.source_refresh.try_send(());
    Ok(Json(json!({"revision": written, "message": message})).into_response())
}

async fn write(
    writer: Arc<dyn SourceWriter>,
    key: ObjectKey,
    file: String,
    edit: Edit,
    message: String,
) -> Result<String, ApiError> {
    let result = tokio::task::spawn_blocking(move || writer.edit(&key, &file, &edit, &message))
        .await
        .map_err(|e| ApiError::internal(format!("source write failed: {e}")))?;
    match result {
        Ok(written) => Ok(written.revision),
        Err(e) => {
            let text = e.to_string();
            Err(match WriteFailure::of(&e) {
                WriteFailure::Conflict => ApiError::new(StatusCode::CONFLICT, "Conflict", text),
                WriteFailure::NotFound => ApiError::not_found(text),
                WriteFailure::Unsupported => {
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", text)
                }
                WriteFailure::Unwritable => {
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", text)
                }
            })
        }
    }
}
