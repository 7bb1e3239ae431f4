//! Node registration (`POST /apis/tend.dev/v1/noderegistrations` with the join token), and
//! the node decisions that need a stored object or the request's body.

use super::auth::Decision;
use super::node_auth::pod_bound_to;
use super::status::ApiError;
use super::tokens::Tokens;
use crate::store::Store;
use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Value, json};
use std::sync::Arc;

/// What a node asks: `{"name": "NODE"}`.
#[derive(Debug, serde::Deserialize)]
struct Registration {
    name: String,
}

/// Issues a credential for the node the body names: 201 with
/// `{"kind": "NodeRegistration", "name": NODE, "credential": SECRET}`.
pub async fn register(tokens: &Tokens, body: &[u8]) -> Result<Response, ApiError> {
    let asked: Registration = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "a node registration is {{\"name\": \"NODE\"}}: {e}"
        ))
    })?;
    let nodes = Arc::clone(&tokens.nodes);
    let name = asked.name.clone();
    let credential = tokio::task::spawn_blocking(move || nodes.issue(&name))
        .await
        .map_err(|e| ApiError::internal(format!("registering node {}: {e}", asked.name)))?
        .map_err(|e| match e {
            super::credentials::CredentialError::BadName(_) => ApiError::bad_request(e.to_string()),
            other => ApiError::internal(other.to_string()),
        })?;
    tracing::info!(node = %asked.name, "node registered; credential issued");
    Ok((
        StatusCode::CREATED,
        Extension(super::audit::AuditName(asked.name.clone())),
        Json(json!({
            "kind": "NodeRegistration",
            "apiVersion": "tend.dev/v1",
            "name": asked.name,
            "credential": credential,
        })),
    )
        .into_response())
}

/// Resolves a node's conditional decision: loads the pod it names, or reads the body of the
/// Node it creates (and puts the body back into the request). `Ok` carries the request on.
pub async fn resolve(
    store: &Arc<dyn Store>,
    decision: Decision,
    node: &str,
    req: Request,
    max_body: usize,
) -> Result<Request, ApiError> {
    match decision {
        Decision::Allow => Ok(req),
        Decision::Deny(reason) => Err(ApiError::forbidden(reason)),
        Decision::IfPodBound(key) => {
            let shown = key.to_string();
            let pod = super::objects::get(store, key).await?;
            if pod_bound_to(&pod, node) {
                Ok(req)
            } else {
                Err(ApiError::forbidden(format!(
                    "node {node} may not {} {shown}: the pod is not bound to it",
                    req.method()
                )))
            }
        }
        Decision::IfCreatesNode(own) => {
            let (parts, body) = req.into_parts();
            let bytes: Bytes = super::limits::read_body(body, max_body).await?;
            let body = serde_json::from_slice::<Value>(&bytes).unwrap_or_default();
            let named = body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if named != own {
                return Err(ApiError::forbidden(format!(
                    "node {own} may not create Node {named:?}: a node creates only its own Node"
                )));
            }
            // The control plane gives pod CIDRs: a node naming one could take another's.
            if ["/spec/podCIDR", "/spec/podCIDRs"]
                .iter()
                .any(|field| body.pointer(field).is_some())
            {
                return Err(ApiError::forbidden(format!(
                    "node {own} may not choose its pod CIDR (spec.podCIDR): the control plane \
                     allocates it"
                )));
            }
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
    }
}
