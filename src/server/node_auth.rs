//! What a node's credential may do, as Kubernetes' node authorizer and NodeRestriction
//! admission plugin decide for `system:node:NAME`: create its own Node and write its status,
//! write the status of the pods bound to it and delete them, read what running them takes,
//! nothing else. Pure: a decision that depends on a stored
//! pod is handed back as [`Decision::IfPodBound`] for the caller to resolve.

use super::auth::Decision;
use super::path::Route;
use crate::api::Kind;
use axum::http::Method;

/// The decision for node `node` doing `method` on `route`; `field_selector` is the request's
/// `fieldSelector` query parameter (a node lists and watches only the pods bound to it, and
/// must say so: `spec.nodeName=NAME`).
pub fn authorize_node(
    node: &str,
    method: &Method,
    route: &Route,
    field_selector: Option<&str>,
) -> Decision {
    let get = *method == Method::GET;
    let deny = |why: &str| Decision::Deny(format!("node {node} may not {method} {why}"));
    match route {
        Route::Healthz | Route::GitHook => Decision::Allow,
        Route::Version if get => Decision::Allow,
        // Every Node: the other nodes' pod CIDRs and addresses are the agent's routes.
        Route::Collection {
            kind: Kind::Node, ..
        } if get => Decision::Allow,
        Route::Collection {
            kind: Kind::Node, ..
        } if *method == Method::POST => Decision::IfCreatesNode(node.to_string()),
        // Its own Node's status; the spec (pod CIDR, taints) and labels are the control
        // plane's and the admin's once the Node exists.
        Route::Status(key)
            if key.kind == Kind::Node && *method == Method::PUT && key.name == node =>
        {
            Decision::Allow
        }
        Route::Object(key) | Route::Status(key) if key.kind == Kind::Node => {
            if get {
                Decision::Allow
            } else if key.name == node {
                deny("its own Node (it may read it and replace its status)")
            } else {
                deny(&format!(
                    "Node {}: a node writes only its own Node",
                    key.name
                ))
            }
        }
        Route::Collection {
            kind: Kind::Pod, ..
        } if get => {
            if selects_node(field_selector.unwrap_or_default(), node) {
                Decision::Allow
            } else {
                Decision::Deny(format!(
                    "node {node} may list and watch only the pods bound to it: add \
                     fieldSelector=spec.nodeName={node}"
                ))
            }
        }
        Route::Object(key) if key.kind == Kind::Pod && (get || *method == Method::DELETE) => {
            Decision::IfPodBound(key.clone())
        }
        Route::Status(key) if key.kind == Kind::Pod && (get || *method == Method::PUT) => {
            Decision::IfPodBound(key.clone())
        }
        // Events about its pods (pulls, starts, kills, back-offs), aggregated by the server.
        Route::Collection {
            kind: Kind::Event,
            namespace: Some(_),
        } if *method == Method::POST => Decision::Allow,
        Route::Collection { kind, .. } if get && service_kind(*kind) => Decision::Allow,
        Route::Object(key) if get && service_kind(key.kind) => Decision::Allow,
        Route::Register => deny("the node registration (registering takes the join token)"),
        Route::Collection { kind, .. } => deny(kind.plural()),
        Route::Object(key) | Route::Status(key) => deny(&key.to_string()),
        Route::Version => deny("/version"),
    }
}

/// Services and their endpoints: every node load-balances every Service.
fn service_kind(kind: Kind) -> bool {
    matches!(kind, Kind::Service | Kind::Endpoints | Kind::EndpointSlice)
}

/// Whether a field selector (`a=b,c!=d`) requires `spec.nodeName` to be `node`.
pub fn selects_node(selector: &str, node: &str) -> bool {
    selector.split(',').any(|term| {
        let term = term.trim();
        let value = term
            .strip_prefix("spec.nodeName==")
            .or_else(|| term.strip_prefix("spec.nodeName="));
        value.is_some_and(|v| v.trim() == node)
    })
}

/// Whether a stored pod is bound to `node` (its `spec.nodeName`).
pub fn pod_bound_to(pod: &serde_json::Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(|v| v.as_str()) == Some(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;
    use serde_json::json;

    fn collection(kind: Kind, namespace: Option<&str>) -> Route {
        Route::Collection {
            kind,
            namespace: namespace.map(str::to_string),
        }
    }

    fn pod(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Pod, "default", name)
    }

    fn node(name: &str) -> ObjectKey {
        ObjectKey::new(Kind::Node, "", name)
    }

    /// The whole table: (method, route, fieldSelector, expected) for node `a`.
    #[test]
    fn a_node_may_do_what_running_its_pods_takes_and_nothing_else() {
        use Decision::*;
        let mine = Some("spec.nodeName=a");
        let table: Vec<(Method, Route, Option<&str>, Decision)> = vec![
            (Method::GET, Route::Version, None, Allow),
            (Method::GET, collection(Kind::Node, None), None, Allow),
            (
                Method::POST,
                collection(Kind::Node, None),
                None,
                IfCreatesNode("a".into()),
            ),
            (Method::GET, Route::Object(node("a")), None, Allow),
            (Method::GET, Route::Object(node("b")), None, Allow),
            (Method::PUT, Route::Status(node("a")), None, Allow),
            (Method::GET, collection(Kind::Pod, None), mine, Allow),
            (
                Method::GET,
                collection(Kind::Pod, Some("default")),
                Some("metadata.namespace=x,spec.nodeName==a"),
                Allow,
            ),
            (
                Method::GET,
                Route::Object(pod("p")),
                None,
                IfPodBound(pod("p")),
            ),
            (
                Method::GET,
                Route::Status(pod("p")),
                None,
                IfPodBound(pod("p")),
            ),
            (
                Method::PUT,
                Route::Status(pod("p")),
                None,
                IfPodBound(pod("p")),
            ),
            (
                Method::DELETE,
                Route::Object(pod("p")),
                None,
                IfPodBound(pod("p")),
            ),
            (
                Method::POST,
                collection(Kind::Event, Some("default")),
                None,
                Allow,
            ),
            (Method::GET, collection(Kind::Service, None), None, Allow),
            (
                Method::GET,
                collection(Kind::Endpoints, Some("default")),
                None,
                Allow,
            ),
            (
                Method::GET,
                collection(Kind::EndpointSlice, None),
                None,
                Allow,
            ),
            (
                Method::GET,
                Route::Object(ObjectKey::new(Kind::Service, "default", "s")),
                None,
                Allow,
            ),
        ];
        for (method, route, fields, expected) in table {
            assert_eq!(
                authorize_node("a", &method, &route, fields),
                expected,
                "{method} {route:?} {fields:?}"
            );
        }
    }

    #[test]
    fn everything_else_is_denied_with_one_line() {
        let denied: Vec<(Method, Route, Option<&str>)> = vec![
            (Method::PUT, Route::Object(node("b")), None),
            (Method::PUT, Route::Object(node("a")), None),
            (Method::PUT, Route::Status(node("b")), None),
            (Method::DELETE, Route::Object(node("a")), None),
            (Method::DELETE, Route::Object(node("b")), None),
            (Method::GET, collection(Kind::Pod, None), None),
            (
                Method::GET,
                collection(Kind::Pod, None),
                Some("spec.nodeName=b"),
            ),
            (
                Method::GET,
                collection(Kind::Pod, None),
                Some("spec.nodeName=ab"),
            ),
            (
                Method::GET,
                collection(Kind::Pod, None),
                Some("spec.nodeName!=a"),
            ),
            (Method::POST, collection(Kind::Pod, Some("default")), None),
            (Method::PUT, Route::Object(pod("p")), None),
            (Method::GET, collection(Kind::Deployment, None), None),
            (
                Method::GET,
                Route::Object(ObjectKey::new(Kind::Deployment, "default", "d")),
                None,
            ),
            (Method::GET, collection(Kind::Event, Some("default")), None),
            (Method::GET, collection(Kind::ReplicaSet, None), None),
            (
                Method::PUT,
                Route::Status(ObjectKey::new(Kind::Service, "default", "s")),
                None,
            ),
            (
                Method::DELETE,
                Route::Object(ObjectKey::new(Kind::Service, "default", "s")),
                None,
            ),
            (Method::POST, Route::Register, None),
            (Method::POST, Route::Version, None),
        ];
        for (method, route, fields) in denied {
            match authorize_node("a", &method, &route, fields) {
                Decision::Deny(reason) => {
                    assert!(reason.contains("node a"), "{reason}");
                    assert!(!reason.contains('\n'), "{reason}");
                }
                other => panic!("{method} {route:?} {fields:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn field_selectors_and_bound_pods() {
        assert!(selects_node("spec.nodeName=a", "a"));
        assert!(!selects_node(
            " status.phase=Running , spec.nodeName == a",
            "a"
        ));
        assert!(selects_node("status.phase=Running,spec.nodeName==a", "a"));
        assert!(!selects_node("", "a"));
        assert!(!selects_node("spec.nodeName=", "a"));
        assert!(pod_bound_to(&json!({"spec": {"nodeName": "a"}}), "a"));
        assert!(!pod_bound_to(&json!({"spec": {"nodeName": "b"}}), "a"));
        assert!(!pod_bound_to(&json!({"spec": {}}), "a"));
    }
}
