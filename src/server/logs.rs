//! `GET /api/v1/namespaces/{ns}/pods/{name}/log?container=&previous=&tailLines=&follow=`:
//! the control plane finds the pod's node and asks that node's agent
//! (`/containerLogs/...` on its InternalIP and `daemonEndpoints.kubeletEndpoint.Port`),
//! signing the request with the join token ([`crate::agent::logs::sign`]), and streams the
//! answer back. Only the admin token may read logs: one node must not read another's logs
//! (nodes have their own credentials; the join token every node holds is still the key of
//! these signatures).
//!
//! Choosing the container and the node's endpoint are pure functions; only [`handle`]
//! touches the store and the network.

use super::{ApiError, Shared};
use crate::agent::logs::{LogOptions, sign};
use crate::api::{Kind, ObjectKey};
use crate::errors::root_cause;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The route this module serves (registered in [`super::router_with_limits`]).
pub const ROUTE: &str = "/api/v1/namespaces/{ns}/pods/{name}/log";

/// kubectl's annotation naming the container `logs` and `exec` pick by default.
pub const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

fn names(pod: &Value, pointer: &str) -> Vec<String> {
    pod.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The container whose log is read: the one asked for (a container or an init container of
/// the pod), else the pod's only container, else the one its
/// `kubectl.kubernetes.io/default-container` annotation names.
pub fn choose_container(pod: &Value, requested: Option<&str>) -> Result<String, ApiError> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let containers = names(pod, "/spec/containers");
    let init = names(pod, "/spec/initContainers");
    if let Some(requested) = requested.filter(|r| !r.is_empty()) {
        if containers.iter().chain(&init).any(|c| c == requested) {
            return Ok(requested.to_string());
        }
        return Err(ApiError::bad_request(format!(
            "container {requested} is not valid for pod {name}"
        )));
    }
    if let [only] = containers.as_slice() {
        return Ok(only.clone());
    }
    let annotated = pod
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(DEFAULT_CONTAINER_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|a| containers.iter().any(|c| c == a));
    if let Some(annotated) = annotated {
        return Ok(annotated.to_string());
    }
    if containers.is_empty() {
        return Err(ApiError::bad_request(format!(
            "pod {name} has no containers"
        )));
    }
    Err(ApiError::bad_request(format!(
        "a container name must be specified for pod {name}, choose one of: [{}]",
        containers.join(" ")
    )))
}

/// `host:port` of a node's log endpoint: its InternalIP and the port it advertises.
pub fn agent_endpoint(node: &Value) -> Result<String, ApiError> {
    let name = node
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let unreachable = |why: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            format!("node {name} {why}"),
        )
    };
    let ip = node
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .and_then(|a| a.get("address").and_then(Value::as_str))
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .ok_or_else(|| unreachable("has no InternalIP address in its status".into()))?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| {
            unreachable(
                "advertises no log endpoint (status.daemonEndpoints.kubeletEndpoint.Port)".into(),
            )
        })?;
    Ok(std::net::SocketAddr::new(ip, port).to_string())
}

#[derive(Debug, Default, serde::Deserialize)]
struct ContainerParam {
    container: Option<String>,
}

fn http() -> Result<&'static reqwest::Client, ApiError> {
    static HTTP: OnceLock<reqwest::Client> = OnceLock::new();
    if let Some(client) = HTTP.get() {
        return Ok(client);
    }
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ApiError::internal(format!("building the HTTP client: {e}")))?;
    Ok(HTTP.get_or_init(|| client))
}

/// Serves [`ROUTE`].
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((namespace, name)): Path<(String, String)>,
    req: Request,
) -> Response {
    respond(&shared, &namespace, &name, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn respond(
    shared: &Shared,
    namespace: &str,
    name: &str,
    req: Request,
) -> Result<Response, ApiError> {
    super::admin_only(shared, req.headers(), "read pod logs")?;
    if req.method() != Method::GET {
        return Err(ApiError::method_not_allowed(
            req.method().as_str(),
            req.uri().path(),
        ));
    }
    let options = LogOptions::from_query(req.uri().query()).map_err(ApiError::bad_request)?;
    let requested = Query::<ContainerParam>::try_from_uri(req.uri())
        .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))?
        .0
        .container;
    let key = ObjectKey::new(Kind::Pod, namespace, name);
    let pod = super::objects::blocking(&shared.api.store, move |s| s.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("pods \"{name}\" not found")))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
        .to_string();
    let container = choose_container(&pod, requested.as_deref())?;
    let node_key = ObjectKey::new(Kind::Node, "", &node_name);
    let node = super::objects::blocking(&shared.api.store, move |s| s.get(&node_key))
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "node {node_name} of pod {name} not found: it was deleted"
            ))
        })?;
    let endpoint = agent_endpoint(&node)?;

    let mut path = format!("/containerLogs/{namespace}/{name}/{container}");
    let query: Vec<String> = options
        .to_query()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let authorization = sign::sign(
        shared.api.tokens.join.as_bytes(),
        "GET",
        &path,
        sign::unix_now(),
    );
    let answer = http()?
        .get(format!("http://{endpoint}{path}"))
        .header(header::AUTHORIZATION, authorization)
        .send()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "BadGateway",
                format!(
                    "cannot reach the agent of node {node_name} at {endpoint}: {}",
                    root_cause(&e)
                ),
            )
        })?;
    let status = answer.status();
    if status.is_success() {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            Body::from_stream(answer.bytes_stream()),
        )
            .into_response());
    }
    let text = answer.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| text.trim().chars().take(200).collect());
    Err(match status.as_u16() {
        400 => ApiError::bad_request(message),
        404 => ApiError::not_found(message),
        401 | 403 => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            format!(
                "the agent of node {node_name} refused the control plane's signature: {message} \
                 (does it use this cluster's join token?)"
            ),
        ),
        code => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "BadGateway",
            format!("the agent of node {node_name} at {endpoint} answered {code}: {message}"),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(containers: &[&str], annotation: Option<&str>) -> Value {
        let mut pod = json!({
            "metadata": {"name": "web-1"},
            "spec": {
                "containers": containers.iter().map(|c| json!({"name": c})).collect::<Vec<_>>(),
                "initContainers": [{"name": "setup"}],
            },
        });
        if let Some(a) = annotation {
            pod["metadata"]["annotations"] = json!({DEFAULT_CONTAINER_ANNOTATION: a});
        }
        pod
    }

    #[test]
    fn the_only_container_is_the_default() {
        assert_eq!(
            choose_container(&pod(&["web"], None), None),
            Ok("web".into())
        );
        assert_eq!(
            choose_container(&pod(&["web"], None), Some("")),
            Ok("web".into())
        );
    }

    #[test]
    fn several_containers_need_a_name_or_the_annotation() {
        let err = choose_container(&pod(&["a", "b"], None), None).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        assert_eq!(
            err.message,
            "a container name must be specified for pod web-1, choose one of: [a b]"
        );
        assert_eq!(
            choose_container(&pod(&["a", "b"], Some("b")), None),
            Ok("b".into())
        );
        // An annotation naming no container is ignored.
        assert!(choose_container(&pod(&["a", "b"], Some("zz")), None).is_err());
        assert_eq!(
            choose_container(&pod(&["a", "b"], None), Some("a")),
            Ok("a".into())
        );
        assert_eq!(
            choose_container(&pod(&["a", "b"], None), Some("setup")),
            Ok("setup".into())
        );
    }

    #[test]
    fn unknown_containers_are_refused() {
        let err = choose_container(&pod(&["web"], None), Some("db")).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_REQUEST);
        assert_eq!(err.message, "container db is not valid for pod web-1");
    }

    #[test]
    fn endpoint_from_the_node_status() {
        let node = json!({"metadata": {"name": "n1"}, "status": {
            "addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        }});
        assert_eq!(agent_endpoint(&node), Ok("10.0.0.5:10250".to_string()));
        let mut v6 = node.clone();
        v6["status"]["addresses"][1]["address"] = json!("fd00::5");
        assert_eq!(agent_endpoint(&v6), Ok("[fd00::5]:10250".to_string()));
        let mut no_port = node.clone();
        no_port["status"]["daemonEndpoints"] = json!({});
        let err = agent_endpoint(&no_port).unwrap_err();
        assert_eq!(err.code, StatusCode::BAD_GATEWAY);
        assert!(
            err.message
                .starts_with("node n1 advertises no log endpoint")
        );
        let mut no_ip = node;
        no_ip["status"]["addresses"] = json!([]);
        assert!(
            agent_endpoint(&no_ip)
                .unwrap_err()
                .message
                .contains("no InternalIP")
        );
    }
}
