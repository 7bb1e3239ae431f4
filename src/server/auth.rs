//! Authentication (which token) and authorisation (may it do this): pure decisions.

use super::path::Route;
use super::tokens::{Identity, Tokens};
use crate::api::Kind;
use axum::http::{HeaderMap, Method, header};

/// Whether a request may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
}

/// The identity of a request's `Authorization: Bearer TOKEN` header, if the token is valid.
pub fn authenticate(tokens: &Tokens, headers: &HeaderMap) -> Option<Identity> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    tokens.identify(token.trim())
}

/// The admin token may do everything. The join token is the agents' credential (until nodes
/// get their own, issue 8): it may register, list and update Nodes (create, read, replace,
/// status),
/// read the server version, read pods, services and endpoints (list and watch too, for a node's
/// own pods and the load balancing of every Service), write pod status, post events, and
/// delete pods (a node deletes a pod once it has stopped it); nothing else.
pub fn authorize(identity: Identity, method: &Method, route: &Route) -> Decision {
    if identity == Identity::Admin {
        return Decision::Allow;
    }
    let allowed = match route {
        Route::Healthz | Route::GitHook => true,
        Route::Version => *method == Method::GET,
        // Listing nodes gives an agent the other nodes' pod CIDRs and addresses (routes).
        Route::Collection {
            kind: Kind::Node,
            namespace: None,
        } => *method == Method::POST || *method == Method::GET,
        Route::Object(key) if key.kind == Kind::Node => {
            *method == Method::GET || *method == Method::PUT
        }
        Route::Status(key) if key.kind == Kind::Node || key.kind == Kind::Pod => {
            *method == Method::GET || *method == Method::PUT
        }
        Route::Collection { kind, .. } if agent_reads(*kind) => *method == Method::GET,
        // Events about its pods (pulls, starts, kills, back-offs), aggregated by the server.
        Route::Collection {
            kind: Kind::Event,
            namespace: Some(_),
        } => *method == Method::POST,
        Route::Object(key) if key.kind == Kind::Pod => {
            *method == Method::GET || *method == Method::DELETE
        }
        Route::Object(key) if agent_reads(key.kind) => *method == Method::GET,
        _ => false,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Deny(format!(
            "the {identity} token may not {method} this resource"
        ))
    }
}

/// What a node reads: its pods, and every Service and its endpoints.
fn agent_reads(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Pod | Kind::Service | Kind::Endpoints | Kind::EndpointSlice
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ObjectKey;
    use axum::http::HeaderValue;

    fn node() -> ObjectKey {
        ObjectKey::new(Kind::Node, "", "n1")
    }

    fn deployment() -> ObjectKey {
        ObjectKey::new(Kind::Deployment, "default", "web")
    }

    #[test]
    fn admin_may_do_everything() {
        for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
            for route in [
                Route::Object(deployment()),
                Route::Status(node()),
                Route::Version,
            ] {
                assert_eq!(authorize(Identity::Admin, &method, &route), Decision::Allow);
            }
        }
    }

    #[test]
    fn join_may_register_and_update_nodes() {
        let nodes = Route::Collection {
            kind: Kind::Node,
            namespace: None,
        };
        assert_eq!(
            authorize(Identity::Join, &Method::POST, &nodes),
            Decision::Allow
        );
        assert_eq!(
            authorize(Identity::Join, &Method::GET, &nodes),
            Decision::Allow
        );
        let events = Route::Collection {
            kind: Kind::Event,
            namespace: Some("default".into()),
        };
        assert_eq!(
            authorize(Identity::Join, &Method::POST, &events),
            Decision::Allow
        );
        assert_eq!(
            authorize(Identity::Join, &Method::GET, &Route::Object(node())),
            Decision::Allow
        );
        assert_eq!(
            authorize(Identity::Join, &Method::PUT, &Route::Object(node())),
            Decision::Allow
        );
        assert_eq!(
            authorize(Identity::Join, &Method::PUT, &Route::Status(node())),
            Decision::Allow
        );
    }

    #[test]
    fn join_may_not_touch_anything_else() {
        let denied = [
            (Method::GET, Route::Object(deployment())),
            (Method::PUT, Route::Object(deployment())),
            (Method::DELETE, Route::Object(node())),
            (
                Method::DELETE,
                Route::Collection {
                    kind: Kind::Node,
                    namespace: None,
                },
            ),
            (
                Method::POST,
                Route::Collection {
                    kind: Kind::Pod,
                    namespace: Some("default".into()),
                },
            ),
            (
                Method::PUT,
                Route::Object(ObjectKey::new(Kind::Pod, "default", "p")),
            ),
            (
                Method::PUT,
                Route::Status(ObjectKey::new(Kind::Service, "default", "s")),
            ),
            (
                Method::DELETE,
                Route::Object(ObjectKey::new(Kind::Service, "default", "s")),
            ),
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::ReplicaSet,
                    namespace: None,
                },
            ),
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::Event,
                    namespace: Some("default".into()),
                },
            ),
        ];
        for (method, route) in denied {
            assert!(
                matches!(
                    authorize(Identity::Join, &method, &route),
                    Decision::Deny(_)
                ),
                "{method} {route:?}"
            );
        }
    }

    #[test]
    fn join_may_run_pods_as_a_node() {
        let pod = ObjectKey::new(Kind::Pod, "default", "p");
        let allowed = [
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::Pod,
                    namespace: None,
                },
            ),
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::Service,
                    namespace: Some("default".into()),
                },
            ),
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::Endpoints,
                    namespace: None,
                },
            ),
            (Method::GET, Route::Object(pod.clone())),
            (Method::PUT, Route::Status(pod.clone())),
            (Method::DELETE, Route::Object(pod)),
            (
                Method::GET,
                Route::Object(ObjectKey::new(Kind::Endpoints, "default", "s")),
            ),
        ];
        for (method, route) in allowed {
            assert_eq!(
                authorize(Identity::Join, &method, &route),
                Decision::Allow,
                "{method} {route:?}"
            );
        }
    }

    #[test]
    fn bearer_header_is_parsed() {
        let tokens = Tokens {
            admin: "adm".into(),
            join: "jn".into(),
        };
        let mut headers = HeaderMap::new();
        assert_eq!(authenticate(&tokens, &headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer adm"),
        );
        assert_eq!(authenticate(&tokens, &headers), Some(Identity::Admin));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("bearer jn"));
        assert_eq!(authenticate(&tokens, &headers), Some(Identity::Join));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic adm"));
        assert_eq!(authenticate(&tokens, &headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nope"),
        );
        assert_eq!(authenticate(&tokens, &headers), None);
    }
}
