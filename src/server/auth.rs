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

/// The admin token may do everything. The join token may register and update Nodes (create,
/// read, replace, status) and read the server version; nothing else.
pub fn authorize(identity: Identity, method: &Method, route: &Route) -> Decision {
    if identity == Identity::Admin {
        return Decision::Allow;
    }
    let allowed = match route {
        Route::Healthz | Route::GitHook => true,
        Route::Version => *method == Method::GET,
        Route::Collection {
            kind: Kind::Node,
            namespace: None,
        } => *method == Method::POST,
        Route::Object(key) if key.kind == Kind::Node => {
            *method == Method::GET || *method == Method::PUT
        }
        Route::Status(key) if key.kind == Kind::Node => {
            *method == Method::GET || *method == Method::PUT
        }
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
                Method::GET,
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
                Route::Status(ObjectKey::new(Kind::Pod, "default", "p")),
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
