//! Authentication (which token) and authorisation (may it do this): pure decisions. What a
//! node's own credential may do is [`super::node_auth`]'s table.

use super::node_auth::authorize_node;
use super::path::{REGISTER_PATH, Route};
use super::tokens::{Identity, Tokens};
use crate::api::ObjectKey;
use axum::http::{HeaderMap, Method, header};

/// Whether a request may go ahead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// Allowed when the stored pod is bound to this node (`spec.nodeName`); a node's
    /// request about a pod. A pod that does not exist answers 404.
    IfPodBound(ObjectKey),
    /// Allowed when the Node the body creates is this node.
    IfCreatesNode(String),
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

/// The admin token may do everything. The join token may only register a node (and read the
/// server version): the node then uses the credential it received, which may do what
/// [`authorize_node`] says. `field_selector` is the request's `fieldSelector`.
pub fn authorize(
    identity: &Identity,
    method: &Method,
    route: &Route,
    field_selector: Option<&str>,
) -> Decision {
    match identity {
        Identity::Admin => Decision::Allow,
        Identity::Node(name) => authorize_node(name, method, route, field_selector),
        Identity::Join => match route {
            Route::Healthz | Route::GitHook => Decision::Allow,
            Route::Register if *method == Method::POST => Decision::Allow,
            Route::Version if *method == Method::GET => Decision::Allow,
            _ => Decision::Deny(format!(
                "the join token may only register a node (POST {REGISTER_PATH}), not {method} \
                 this resource; the node then uses its own credential"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Kind;
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
                Route::Register,
            ] {
                assert_eq!(
                    authorize(&Identity::Admin, &method, &route, None),
                    Decision::Allow
                );
            }
        }
    }

    #[test]
    fn join_may_only_register() {
        assert_eq!(
            authorize(&Identity::Join, &Method::POST, &Route::Register, None),
            Decision::Allow
        );
        assert_eq!(
            authorize(&Identity::Join, &Method::GET, &Route::Version, None),
            Decision::Allow
        );
        let pods = Route::Collection {
            kind: Kind::Pod,
            namespace: None,
        };
        let denied = [
            (Method::GET, Route::Register, None),
            (Method::GET, Route::Object(deployment()), None),
            (Method::PUT, Route::Object(deployment()), None),
            (Method::GET, Route::Object(node()), None),
            (Method::PUT, Route::Status(node()), None),
            (
                Method::POST,
                Route::Collection {
                    kind: Kind::Node,
                    namespace: None,
                },
                None,
            ),
            (Method::GET, pods.clone(), Some("spec.nodeName=n1")),
            (
                Method::GET,
                Route::Collection {
                    kind: Kind::Service,
                    namespace: None,
                },
                None,
            ),
            (
                Method::POST,
                Route::Collection {
                    kind: Kind::Event,
                    namespace: Some("default".into()),
                },
                None,
            ),
        ];
        for (method, route, fields) in denied {
            match authorize(&Identity::Join, &method, &route, fields) {
                Decision::Deny(reason) => assert!(reason.contains("only register"), "{reason}"),
                other => panic!("{method} {route:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn nodes_are_decided_by_the_node_table() {
        let me = Identity::Node("n1".into());
        assert_eq!(
            authorize(&me, &Method::PUT, &Route::Status(node()), None),
            Decision::Allow
        );
        let other = ObjectKey::new(Kind::Node, "", "n2");
        assert!(matches!(
            authorize(&me, &Method::PUT, &Route::Status(other), None),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn bearer_header_is_parsed() {
        let tokens = Tokens::new("adm", "jn");
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
