//! Field selectors (`?fieldSelector=spec.nodeName=n1,metadata.name!=x`), Kubernetes syntax:
//! so that a node lists and watches only the pods bound to it. Pure: parse and match.

use crate::api::Kind;
use serde_json::Value;

/// One `field=value` (or `==`, `!=`) term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// A JSON pointer into the object: `/spec/nodeName`.
    pointer: &'static str,
    value: String,
    equal: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid field selector {input:?}: {reason}")]
pub struct FieldSelectorError {
    pub input: String,
    pub reason: String,
}

/// The fields Kubernetes lets a client select `kind` by (metadata for all kinds; pods also by
/// node and phase, which is what nodes and kubectl use).
fn field_pointer(kind: Kind, field: &str) -> Option<&'static str> {
    match (kind, field) {
        (_, "metadata.name") => Some(pointer::NAME),
        (_, "metadata.namespace") if kind.namespaced() => Some(pointer::NAMESPACE),
        (Kind::Pod, "spec.nodeName") => Some(pointer::NODE_NAME),
        (Kind::Pod, "status.phase") => Some(pointer::PHASE),
        _ => None,
    }
}

/// The JSON pointers of every field a selector can name, whatever the kind.
pub mod pointer {
    pub const NAME: &str = "/metadata/name";
    pub const NAMESPACE: &str = "/metadata/namespace";
    pub const NODE_NAME: &str = "/spec/nodeName";
    pub const PHASE: &str = "/status/phase";
}

impl FieldSelector {
    pub fn parse(kind: Kind, input: &str) -> Result<FieldSelector, FieldSelectorError> {
        let err = |reason: String| FieldSelectorError {
            input: input.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        for term in input.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
                (f, v, false)
            } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (f, v, true)
            } else {
                return Err(err(format!("{term:?} is not field=value or field!=value")));
            };
            let field = field.trim();
            let pointer = field_pointer(kind, field).ok_or_else(|| {
                err(format!(
                    "field label {field:?} is not supported for {}",
                    kind.plural()
                ))
            })?;
            requirements.push(FieldRequirement {
                pointer,
                value: value.trim().to_string(),
                equal,
            });
        }
        Ok(FieldSelector(requirements))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A missing field counts as the empty string, as in Kubernetes (`spec.nodeName=` selects
    /// unbound pods).
    pub fn matches(&self, object: &Value) -> bool {
        self.matches_by(|pointer| object.pointer(pointer).and_then(Value::as_str))
    }

    /// [`FieldSelector::matches`] on fields looked up by `get`, given the field's JSON pointer
    /// (one of [`pointer`]'s).
    pub fn matches_by<'a>(&self, get: impl Fn(&'static str) -> Option<&'a str>) -> bool {
        self.0.iter().all(|r| {
            let found = get(r.pointer).unwrap_or_default();
            (found == r.value) == r.equal
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selects_pods_by_node_and_name() {
        let pod = |name: &str, node: Option<&str>| {
            let mut p = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "default"}});
            if let Some(node) = node {
                p["spec"] = json!({"nodeName": node});
            }
            p
        };
        let on_n1 = FieldSelector::parse(Kind::Pod, "spec.nodeName=n1").expect("parses");
        assert!(on_n1.matches(&pod("a", Some("n1"))));
        assert!(!on_n1.matches(&pod("a", Some("n2"))));
        assert!(!on_n1.matches(&pod("a", None)));
        let unbound = FieldSelector::parse(Kind::Pod, "spec.nodeName=").expect("parses");
        assert!(unbound.matches(&pod("a", None)));
        let both =
            FieldSelector::parse(Kind::Pod, "spec.nodeName==n1, metadata.name!=b").expect("ok");
        assert!(both.matches(&pod("a", Some("n1"))));
        assert!(!both.matches(&pod("b", Some("n1"))));
        assert!(FieldSelector::parse(Kind::Pod, "").expect("ok").is_empty());
    }

    #[test]
    fn unknown_fields_and_bad_terms_are_errors() {
        assert!(FieldSelector::parse(Kind::Pod, "spec.nodename=n1").is_err());
        assert!(FieldSelector::parse(Kind::Service, "spec.nodeName=n1").is_err());
        assert!(FieldSelector::parse(Kind::Node, "metadata.namespace=x").is_err());
        assert!(FieldSelector::parse(Kind::Pod, "spec.nodeName").is_err());
        assert!(FieldSelector::parse(Kind::Node, "metadata.name=n1").is_ok());
    }
}
