//! REST paths, Kubernetes style, parsed into what they name. Pure: no I/O.

use crate::api::{Kind, ObjectKey};

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Version,
    /// `POST /api/v1/hooks/git`: a signed "fetch now" from a git host.
    GitHook,
    /// `POST /apis/tend.dev/v1/noderegistrations`: a node presents the join token and its
    /// name, and receives its own credential.
    Register,
    /// A collection: `{prefix}/namespaces/{ns}/{plural}`, or `{prefix}/{plural}` (a cluster-scoped
    /// kind, or a namespaced kind across all namespaces, when `namespace` is `None`).
    Collection {
        kind: Kind,
        namespace: Option<String>,
    },
    /// One object: `.../{plural}/{name}`.
    Object(ObjectKey),
    /// The status subresource: `.../{plural}/{name}/status`.
    Status(ObjectKey),
}

/// Where nodes register (see [`Route::Register`]).
pub const REGISTER_PATH: &str = "/apis/tend.dev/v1/noderegistrations";

/// Parses a request path; `None` when it names nothing (404), including a plural under another
/// kind's API group.
pub fn parse(path: &str) -> Option<Route> {
    match path {
        "/healthz" => return Some(Route::Healthz),
        "/version" => return Some(Route::Version),
        "/api/v1/hooks/git" => return Some(Route::GitHook),
        REGISTER_PATH => return Some(Route::Register),
        _ => {}
    }
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let (prefix_len, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (2, rest),
        ["apis", _, _, rest @ ..] => (3, rest),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return None;
    }
    let prefix = format!("/{}", segments[..prefix_len].join("/"));
    let kind_under_prefix =
        |plural: &str| Kind::from_plural(plural).filter(|k| k.api_prefix() == prefix);
    let route = match rest {
        [plural] => Route::Collection {
            kind: kind_under_prefix(plural)?,
            namespace: None,
        },
        ["namespaces", ns, plural] => {
            let kind = kind_under_prefix(plural).filter(|k| k.namespaced())?;
            Route::Collection {
                kind,
                namespace: Some(ns.to_string()),
            }
        }
        ["namespaces", ns, plural, name] => {
            let kind = kind_under_prefix(plural).filter(|k| k.namespaced())?;
            Route::Object(ObjectKey::new(kind, ns, name))
        }
        ["namespaces", ns, plural, name, "status"] => {
            let kind = kind_under_prefix(plural).filter(|k| k.namespaced())?;
            Route::Status(ObjectKey::new(kind, ns, name))
        }
        [plural, name] => {
            let kind = kind_under_prefix(plural).filter(|k| !k.namespaced())?;
            Route::Object(ObjectKey::new(kind, "", name))
        }
        [plural, name, "status"] => {
            let kind = kind_under_prefix(plural).filter(|k| !k.namespaced())?;
            Route::Status(ObjectKey::new(kind, "", name))
        }
        _ => return None,
    };
    Some(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: Kind, ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(kind, ns, name)
    }

    #[test]
    fn namespaced_paths() {
        assert_eq!(
            parse("/apis/apps/v1/namespaces/default/deployments"),
            Some(Route::Collection {
                kind: Kind::Deployment,
                namespace: Some("default".into())
            })
        );
        assert_eq!(
            parse("/apis/apps/v1/namespaces/web/deployments/shop"),
            Some(Route::Object(key(Kind::Deployment, "web", "shop")))
        );
        assert_eq!(
            parse("/api/v1/namespaces/default/pods/p1/status"),
            Some(Route::Status(key(Kind::Pod, "default", "p1")))
        );
        assert_eq!(
            parse("/api/v1/pods"),
            Some(Route::Collection {
                kind: Kind::Pod,
                namespace: None
            })
        );
        assert_eq!(
            parse("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"),
            Some(Route::Collection {
                kind: Kind::EndpointSlice,
                namespace: Some("default".into())
            })
        );
    }

    #[test]
    fn cluster_scoped_paths() {
        assert_eq!(
            parse("/api/v1/nodes/n1"),
            Some(Route::Object(key(Kind::Node, "", "n1")))
        );
        assert_eq!(
            parse("/api/v1/nodes/n1/status"),
            Some(Route::Status(key(Kind::Node, "", "n1")))
        );
        assert_eq!(
            parse("/apis/tend.dev/v1/revisions"),
            Some(Route::Collection {
                kind: Kind::Revision,
                namespace: None
            })
        );
        // Cluster-scoped kinds have no namespaced paths.
        assert_eq!(parse("/api/v1/namespaces/default/nodes/n1"), None);
    }

    #[test]
    fn wrong_group_or_shape_is_none() {
        assert_eq!(parse("/api/v1/namespaces/default/deployments"), None);
        assert_eq!(parse("/apis/apps/v1/namespaces/default/pods"), None);
        assert_eq!(parse("/apis/apps/v2/namespaces/default/deployments"), None);
        assert_eq!(parse("/api/v1/pods/p1"), None);
        assert_eq!(parse("/api/v1/widgets"), None);
        assert_eq!(parse("/api/v1/namespaces//pods"), None);
        assert_eq!(parse("/api/v1/namespaces/default/pods/p1/logs"), None);
        assert_eq!(parse("/"), None);
        assert_eq!(parse("/api"), None);
    }

    #[test]
    fn fixed_paths() {
        assert_eq!(parse("/healthz"), Some(Route::Healthz));
        assert_eq!(parse("/version"), Some(Route::Version));
        assert_eq!(parse("/api/v1/hooks/git"), Some(Route::GitHook));
    }
}
