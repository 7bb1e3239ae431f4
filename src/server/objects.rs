//! Reads and writes of objects: list, get, create, replace, replace status, delete.

use super::fields::FieldSelector;
use super::status::ApiError;
use crate::api::selector::Selector;
use crate::api::{Kind, ObjectKey, ObjectMeta};
use crate::store::{CommitDone, Committed, Op, Store, StoreError};
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// Runs a (blocking) store call off the async workers.
pub async fn blocking<T, F>(store: &Arc<dyn Store>, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
        .map_err(ApiError::from)
}

/// Commits a transaction. A store with its own committing thread (redb) is handed the
/// transaction and awaited, so the request holds no thread while its group waits for the
/// fsync; otherwise the commit runs off the async workers, as `blocking`.
pub async fn commit(store: &Arc<dyn Store>, ops: Vec<Op>) -> Result<Committed, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let done: CommitDone = Box::new(move |outcome| {
        let _ = tx.send(outcome);
    });
    match store.submit(ops, done) {
        Ok(()) => rx
            .await
            .map_err(|_| ApiError::internal("the store's committer stopped"))?
            .map_err(ApiError::from),
        Err((ops, _)) => blocking(store, move |s| s.commit(ops)).await,
    }
}

/// `GET` on a collection: a `<Kind>List` of the objects matching the label and field
/// selectors, encoded. The objects are visited one at a time and each matching one is
/// encoded as it comes, so a list holds its answer's bytes, not every object's JSON tree
/// (about ten times as much: 3,000 Events raised serve's resident memory by ~20 MiB).
pub async fn list(
    store: &Arc<dyn Store>,
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
    fields: FieldSelector,
) -> Result<Vec<u8>, ApiError> {
    blocking(store, move |s| {
        let mut items = Vec::new();
        let mut encoded = Ok(());
        let rv = s.visit(kind, namespace.as_deref(), &mut |o| {
            if encoded.is_err() || !(selector.matches(o.labels()) && fields.matches(&o)) {
                return;
            }
            items.push(if items.is_empty() { b'[' } else { b',' });
            encoded = serde_json::to_writer(&mut items, &o);
        })?;
        encoded.map_err(|e| StoreError::Invalid {
            reason: format!("encoding a {kind}: {e}"),
        })?;
        Ok(list_body(kind, rv, items))
    })
    .await
}

/// `{"apiVersion", "kind": "<Kind>List", "metadata": {"resourceVersion"}, "items"}` around
/// `items`: the encoded objects, `[` before the first and `,` between them (empty: none).
fn list_body(kind: Kind, rv: u64, items: Vec<u8>) -> Vec<u8> {
    let head = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": { "resourceVersion": rv.to_string() },
    })
    .to_string();
    let mut body = Vec::with_capacity(head.len() + items.len() + 16);
    // `{...}` without its closing brace, then the items.
    body.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
    body.extend_from_slice(br#","items":"#);
    if items.is_empty() {
        body.extend_from_slice(b"[]");
    } else {
        body.extend_from_slice(&items);
        body.push(b']');
    }
    body.push(b'}');
    body
}

pub async fn get(store: &Arc<dyn Store>, key: ObjectKey) -> Result<Value, ApiError> {
    let shown = key.to_string();
    blocking(store, move |s| s.get(&key))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("{shown} not found")))
}

/// `POST` on a collection.
pub async fn create(
    store: &Arc<dyn Store>,
    kind: Kind,
    namespace: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut object = prepare_object(kind, namespace, None, body)?;
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let committed = commit(store, vec![Op::Create(object)]).await?;
    first_object(committed.objects)
}

/// `PUT` on an object: replaces metadata and spec, guarded by the body's resourceVersion.
pub async fn replace(
    store: &Arc<dyn Store>,
    key: ObjectKey,
    body: &[u8],
) -> Result<Value, ApiError> {
    let object = prepare_object(key.kind, &key.namespace, Some(&key.name), body)?;
    let expect_rv = expected_rv(&object)?;
    let committed = commit(store, vec![Op::Put { object, expect_rv }]).await?;
    first_object(committed.objects)
}

/// `PUT` on `.../status`: replaces only the status.
pub async fn replace_status(
    store: &Arc<dyn Store>,
    key: ObjectKey,
    body: &[u8],
) -> Result<Value, ApiError> {
    let object = prepare_object(key.kind, &key.namespace, Some(&key.name), body)?;
    let expect_rv = expected_rv(&object)?;
    let status = object.get("status").cloned().unwrap_or_else(|| json!({}));
    let ops = vec![Op::PutStatus {
        key,
        status,
        expect_rv,
    }];
    let committed = commit(store, ops).await?;
    first_object(committed.objects)
}

/// `DELETE` on an object; an optional `DeleteOptions` body may carry
/// `preconditions.resourceVersion`. Answers with the object's last state.
pub async fn delete(
    store: &Arc<dyn Store>,
    key: ObjectKey,
    body: &[u8],
) -> Result<Value, ApiError> {
    let expect_rv = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let options: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid DeleteOptions: {e}")))?;
        parse_rv(options.pointer("/preconditions/resourceVersion"))?
    };
    let committed = commit(store, vec![Op::Delete { key, expect_rv }]).await?;
    first_object(committed.objects)
}

fn first_object(objects: Vec<Value>) -> Result<Value, ApiError> {
    objects
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("the store returned no object for a write"))
}

/// Parses a request body as an object of `kind` addressed by the path: fills in `kind`,
/// `apiVersion` and the namespace when absent, and refuses a body that names another kind,
/// namespace or name (400).
pub fn prepare_object(
    kind: Kind,
    namespace: &str,
    name: Option<&str>,
    body: &[u8],
) -> Result<Value, ApiError> {
    let mut object: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
    let Some(fields) = object.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    fill_or_check(fields, "kind", kind.name())?;
    fill_or_check(fields, "apiVersion", kind.api_version())?;
    let meta = fields
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be an object"))?;
    let body_name = meta.get("name").and_then(Value::as_str).unwrap_or_default();
    if body_name.is_empty() {
        return Err(ApiError::bad_request("metadata.name is required"));
    }
    // As the Kubernetes API server: names and namespaces are DNS names, so that no name
    // can carry a path, a newline or a shell word into the agents (bundle paths, log files).
    if let Some(problem) = crate::manifest::validate::dns_subdomain_problem(body_name) {
        return Err(ApiError::bad_request(format!(
            "invalid metadata.name {body_name:?}: a DNS-1123 subdomain {problem}"
        )));
    }
    if let Some(name) = name
        && body_name != name
    {
        return Err(ApiError::bad_request(format!(
            "metadata.name {body_name:?} does not match the name in the path {name:?}"
        )));
    }
    if kind.namespaced() {
        if let Some(problem) = crate::manifest::validate::dns_label_problem(namespace) {
            return Err(ApiError::bad_request(format!(
                "invalid namespace {namespace:?}: a DNS-1123 label {problem}"
            )));
        }
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), Value::String(namespace.to_string()));
            }
            Some(ns) if ns == namespace => {}
            Some(ns) => {
                return Err(ApiError::bad_request(format!(
                    "metadata.namespace {ns:?} does not match the namespace in the path {namespace:?}"
                )));
            }
        }
    } else {
        meta.remove("namespace");
    }
    Ok(object)
}

fn fill_or_check(
    fields: &mut Map<String, Value>,
    field: &str,
    expected: &str,
) -> Result<(), ApiError> {
    match fields.get(field).and_then(Value::as_str) {
        None | Some("") => {
            fields.insert(field.to_string(), Value::String(expected.to_string()));
            Ok(())
        }
        Some(found) if found == expected => Ok(()),
        Some(found) => Err(ApiError::bad_request(format!(
            "{field} {found:?} does not match the path, which expects {expected:?}"
        ))),
    }
}

/// The resourceVersion a write expects (`metadata.resourceVersion`), if the body gives one.
fn expected_rv(object: &Value) -> Result<Option<u64>, ApiError> {
    parse_rv(object.pointer("/metadata/resourceVersion"))
}

fn parse_rv(value: Option<&Value>) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("resourceVersion {s:?} is not a number"))),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(format!("resourceVersion {n} is not a valid version"))
        }),
        Some(other) => Err(ApiError::bad_request(format!(
            "resourceVersion {other} is not a string"
        ))),
    }
}

/// `POST` of an Event (the agents report pulls, starts, kills and back-offs this way):
/// recorded as the controllers record theirs, so that the same reason and message about the
/// same object bumps `count` instead of piling up.
pub async fn record_event(
    store: &Arc<dyn Store>,
    namespace: &str,
    body: &[u8],
) -> Result<Value, ApiError> {
    let event: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the Event is not JSON: {e}")))?;
    let field = |pointer: &str| {
        event
            .pointer(pointer)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let required = |pointer: &str| {
        field(pointer).ok_or_else(|| ApiError::bad_request(format!("the Event has no {pointer}")))
    };
    let kind = required("/involvedObject/kind")?;
    if Kind::from_name(&kind).is_none() {
        return Err(ApiError::bad_request(format!(
            "the Event's involvedObject.kind {kind:?} is not a kind tend knows"
        )));
    }
    let involved_name = required("/involvedObject/name")?;
    let involved_ns = field("/involvedObject/namespace").unwrap_or_else(|| namespace.to_string());
    // The Event's own name is made of these: DNS names only, as any object's.
    if let Some(problem) = crate::manifest::validate::dns_subdomain_problem(&involved_name) {
        return Err(ApiError::bad_request(format!(
            "invalid involvedObject.name {involved_name:?}: a DNS-1123 subdomain {problem}"
        )));
    }
    if let Some(problem) = crate::manifest::validate::dns_label_problem(&involved_ns) {
        return Err(ApiError::bad_request(format!(
            "invalid involvedObject.namespace {involved_ns:?}: a DNS-1123 label {problem}"
        )));
    }
    let involved = json!({
        "kind": kind,
        "metadata": {
            "name": involved_name,
            "namespace": involved_ns,
            "uid": field("/involvedObject/uid"),
        },
    });
    let reason = required("/reason")?;
    let message = field("/message").unwrap_or_default();
    let event_type = field("/type").unwrap_or_else(|| "Normal".to_string());
    let component = field("/source/component").unwrap_or_else(|| "kubelet".to_string());
    let answer = json!({"kind": "Event", "reason": reason, "message": message});
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        crate::controller::events::EventRecorder::new(
            store,
            Arc::new(crate::controller::runtime::SystemClock),
        )
        .record(&involved, &event_type, &reason, &message, &component)
    })
    .await
    .map_err(|e| ApiError::internal(format!("store task failed: {e}")))?
    .map_err(ApiError::from)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn a_list_is_the_matching_objects_encoded_one_by_one() {
        let store: Arc<dyn Store> = Arc::new(crate::store::memory::MemoryStore::new());
        let pod = |name: &str, app: &str| {
            Op::Create(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "default", "labels": {"app": app}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}))
        };
        let committed = store
            .commit(vec![pod("a", "web"), pod("b", "db"), pod("c", "web")])
            .unwrap();
        let body = |selector: &str| {
            let store = store.clone();
            let selector = Selector::parse(selector).unwrap();
            async move {
                let bytes = list(&store, Kind::Pod, None, selector, FieldSelector::default())
                    .await
                    .unwrap();
                serde_json::from_slice::<Value>(&bytes).unwrap()
            }
        };
        let all = body("").await;
        assert_eq!(all["kind"], "PodList");
        assert_eq!(all["apiVersion"], "v1");
        let rv = committed.resource_version.to_string();
        assert_eq!(all["metadata"]["resourceVersion"], rv.as_str());
        assert_eq!(all["items"], Value::from(committed.objects.clone()));
        let web = body("app=web").await;
        let names: Vec<&str> = web["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p.meta_str("name"))
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(body("app=none").await["items"], json!([]));
    }

    #[test]
    fn fills_kind_api_version_and_namespace() {
        let o = prepare_object(
            Kind::Deployment,
            "web",
            None,
            br#"{"metadata":{"name":"a"}}"#,
        )
        .expect("ok");
        assert_eq!(o["kind"], "Deployment");
        assert_eq!(o["apiVersion"], "apps/v1");
        assert_eq!(o["metadata"]["namespace"], "web");
    }

    #[test]
    fn refuses_mismatches() {
        let cases: [(&[u8], Option<&str>); 9] = [
            (br#"{"metadata":{"name":"../../etc/cron.d/x"}}"#, None),
            (br#"{"metadata":{"name":"a\nb"}}"#, None),
            (br#"{"metadata":{"name":"a; rm -rf /"}}"#, None),
            (br#"{"metadata":{"name":"a","namespace":"other"}}"#, None),
            (br#"{"kind":"Pod","metadata":{"name":"a"}}"#, None),
            (br#"{"apiVersion":"v1","metadata":{"name":"a"}}"#, None),
            (br#"{"metadata":{"name":"b"}}"#, Some("a")),
            (br#"{"metadata":{}}"#, None),
            (b"[1]", None),
        ];
        for (body, name) in cases {
            let err = prepare_object(Kind::Deployment, "web", name, body).err();
            assert_eq!(
                err.map(|e| e.code),
                Some(StatusCode::BAD_REQUEST),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn refuses_a_namespace_that_is_not_a_dns_label() {
        for ns in ["..", "a/b", "Kube System", "x\n"] {
            let err = prepare_object(Kind::Pod, ns, None, br#"{"metadata":{"name":"a"}}"#).err();
            assert_eq!(err.map(|e| e.code), Some(StatusCode::BAD_REQUEST), "{ns:?}");
        }
    }

    #[test]
    fn cluster_scoped_objects_lose_their_namespace() {
        let o = prepare_object(
            Kind::Node,
            "",
            None,
            br#"{"metadata":{"name":"n1","namespace":"x"}}"#,
        )
        .expect("ok");
        assert!(o["metadata"].get("namespace").is_none());
    }

    #[test]
    fn resource_version_parsing() {
        assert_eq!(parse_rv(None).ok(), Some(None));
        assert_eq!(parse_rv(Some(&json!("12"))).ok(), Some(Some(12)));
        assert_eq!(parse_rv(Some(&json!(""))).ok(), Some(None));
        assert_eq!(parse_rv(Some(&json!(7))).ok(), Some(Some(7)));
        assert!(parse_rv(Some(&json!("x"))).is_err());
    }
}
