//! Machine-readable output: `-o json`, `-o yaml`, `-o name`.

use super::humanize::str_at;
use crate::api::Kind;
use serde_json::{Value, json};

/// `-o` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Wide,
    Json,
    Yaml,
    Name,
}

/// kubectl's resource name for `-o name`: `deployment.apps`, `pod`, `revision.tend.dev`.
pub fn resource(kind: Kind) -> String {
    let kind_name = kind.name().to_ascii_lowercase();
    match kind.api_version().split_once('/') {
        Some((group, _)) => format!("{kind_name}.{group}"),
        None => kind_name,
    }
}

/// One line of `-o name`: `deployment.apps/xgp-web`.
pub fn name_line(kind: Kind, object: &Value) -> String {
    format!("{}/{}", resource(kind), str_at(object, "/metadata/name"))
}

/// Objects as `-o json|yaml` prints them: an object, or a `List` of several.
pub fn document(kind: Kind, mut objects: Vec<Value>, single: bool) -> Value {
    for obj in &mut objects {
        if let Some(map) = obj.as_object_mut() {
            map.entry("apiVersion")
                .or_insert_with(|| json!(kind.api_version()));
            map.entry("kind").or_insert_with(|| json!(kind.name()));
        }
    }
    if single && objects.len() == 1 {
        return objects.remove(0);
    }
    json!({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {"resourceVersion": ""}})
}

/// Pretty JSON with a final newline.
pub fn to_json(value: &Value) -> anyhow::Result<String> {
    Ok(serde_json::to_string_pretty(value)? + "\n")
}

pub fn to_yaml(value: &Value) -> anyhow::Result<String> {
    Ok(serde_norway::to_string(value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let obj = json!({"metadata": {"name": "xgp-web"}});
        assert_eq!(name_line(Kind::Deployment, &obj), "deployment.apps/xgp-web");
        assert_eq!(name_line(Kind::ReplicaSet, &obj), "replicaset.apps/xgp-web");
        assert_eq!(name_line(Kind::Pod, &obj), "pod/xgp-web");
        assert_eq!(name_line(Kind::Service, &obj), "service/xgp-web");
        assert_eq!(name_line(Kind::Node, &obj), "node/xgp-web");
        assert_eq!(name_line(Kind::Endpoints, &obj), "endpoints/xgp-web");
        let rev = json!({"metadata": {"name": "4f2a9c1e7b3d5a6f"}});
        assert_eq!(
            name_line(Kind::Revision, &rev),
            "revision.tend.dev/4f2a9c1e7b3d5a6f"
        );
    }

    #[test]
    fn lists_and_single_objects() {
        let a = json!({"metadata": {"name": "a"}});
        let doc = document(Kind::Pod, vec![a.clone()], true);
        assert_eq!(
            doc,
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}})
        );
        let doc = document(Kind::Pod, vec![a], false);
        assert_eq!(doc["kind"], "List");
        assert_eq!(doc["items"][0]["kind"], "Pod");
        let yaml = to_yaml(&document(Kind::Pod, vec![], false)).unwrap();
        assert!(yaml.contains("kind: List"), "{yaml}");
        assert!(to_json(&doc).unwrap().ends_with("}\n"));
    }
}
