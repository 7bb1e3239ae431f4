//! Watches: a chunked stream of newline-delimited JSON events, Kubernetes style
//! (`{"type":"ADDED","object":{...}}`), from a resourceVersion.
//!
//! Every watch reads every change of the store, so the cost per change and watch must stay
//! small (hundreds of nodes each watch their pods, Services and Endpoints): a change is
//! filtered on its stored JSON (the kind read from its first bytes; the fields selectors use
//! parsed only when the kind matches and the watch has selectors) and sent as those bytes,
//! never parsed whole nor encoded again.

use super::fields::FieldSelector;
use super::objects::blocking;
use super::status::ApiError;
use crate::api::selector::Selector;
use crate::api::{Kind, ObjectMeta};
use crate::store::watch::EncodedEvent;
use crate::store::{Store, StoreError, Watch, WatchEventType};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};

/// How often an idle watch gets a `BOOKMARK` carrying the newest resourceVersion seen.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);

/// Fires when the server shuts down, so that watches end and connections can drain.
#[derive(Clone)]
pub struct ShutdownSignal(pub tokio::sync::watch::Receiver<bool>);

impl ShutdownSignal {
    async fn wait(mut self) {
        // An error means the sender is gone: the server is going away too.
        let _ = self.0.wait_for(|down| *down).await;
    }
}

/// What a watch streams: objects of one kind, in one namespace or all, matching a label
/// selector and a field selector.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub kind: Kind,
    pub namespace: Option<String>,
    pub selector: Selector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    pub fn matches(&self, object: &Value) -> bool {
        let kind_matches = object.get("kind").and_then(Value::as_str) == Some(self.kind.name());
        let ns_matches = match &self.namespace {
            None => true,
            Some(ns) => object.meta_str("namespace").unwrap_or("default") == ns,
        };
        kind_matches
            && ns_matches
            && self.selector.matches(object.labels())
            && self.fields.matches(object)
    }

    /// [`WatchFilter::matches`] on an object's stored JSON. Reads the kind first (a few bytes
    /// in: objects are stored with sorted keys, `apiVersion` then `kind`), then, only when
    /// the watch selects on more than the kind, the fields selectors can look at.
    pub fn matches_encoded(&self, object: &[u8]) -> bool {
        if top_level_kind(object).as_deref() != Some(self.kind.name()) {
            return false;
        }
        if self.namespace.is_none() && self.selector.is_empty() && self.fields.is_empty() {
            return true;
        }
        match serde_json::from_slice::<Head>(object) {
            Ok(head) => self.matches(&head.into_value()),
            Err(_) => false,
        }
    }
}

/// The fields a watch filter can look at (kind, name, namespace, labels, and the fields of
/// field selectors); serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct Head {
    kind: Option<Value>,
    metadata: Option<HeadMeta>,
    spec: Option<HeadSpec>,
    status: Option<HeadStatus>,
}

#[derive(serde::Deserialize)]
struct HeadMeta {
    name: Option<Value>,
    namespace: Option<Value>,
    labels: Option<Value>,
}

#[derive(serde::Deserialize)]
struct HeadSpec {
    #[serde(rename = "nodeName")]
    node_name: Option<Value>,
}

#[derive(serde::Deserialize)]
struct HeadStatus {
    phase: Option<Value>,
}

impl Head {
    fn into_value(self) -> Value {
        let mut object = serde_json::Map::new();
        let put = |map: &mut serde_json::Map<String, Value>, k: &str, v: Option<Value>| {
            if let Some(v) = v {
                map.insert(k.to_string(), v);
            }
        };
        put(&mut object, "kind", self.kind);
        if let Some(m) = self.metadata {
            let mut meta = serde_json::Map::new();
            put(&mut meta, "name", m.name);
            put(&mut meta, "namespace", m.namespace);
            put(&mut meta, "labels", m.labels);
            object.insert("metadata".into(), Value::Object(meta));
        }
        if let Some(spec) = self.spec {
            let mut map = serde_json::Map::new();
            put(&mut map, "nodeName", spec.node_name);
            object.insert("spec".into(), Value::Object(map));
        }
        if let Some(status) = self.status {
            let mut map = serde_json::Map::new();
            put(&mut map, "phase", status.phase);
            object.insert("status".into(), Value::Object(map));
        }
        Value::Object(object)
    }
}

/// The top-level `kind` of a JSON object, reading no further than that member.
fn top_level_kind(object: &[u8]) -> Option<String> {
    use serde::de::{Deserializer as _, Error as _, IgnoredAny, MapAccess, Visitor};
    struct Probe<'a>(&'a mut Option<String>);
    impl<'de> Visitor<'de> for Probe<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if key == "kind" {
                    *self.0 = map.next_value::<String>().ok();
                    // Found: stop reading (the error only ends the parse early).
                    return Err(A::Error::custom("found"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut kind = None;
    let _ = serde_json::Deserializer::from_slice(object).deserialize_map(Probe(&mut kind));
    kind
}

/// Where a watch starts.
pub struct WatchStart {
    /// `None` (or 0): send every current object as `ADDED`, then the changes after that list.
    pub resource_version: Option<u64>,
    /// Ends the stream after this long (`?timeoutSeconds=`).
    pub timeout: Option<Duration>,
}

/// Opens a watch and answers with its stream. `Gone` (a too-old resourceVersion) is a 410
/// before the stream starts; later it is an `ERROR` event, and the stream ends.
pub async fn respond(
    store: &Arc<dyn Store>,
    filter: WatchFilter,
    start: WatchStart,
    slot: impl Send + Sync + 'static,
    shutdown: Option<ShutdownSignal>,
) -> Result<Response, ApiError> {
    let mut pending = VecDeque::new();
    let (watch, from_rv) = match start.resource_version.filter(|rv| *rv > 0) {
        Some(rv) => (blocking(store, move |s| s.watch(rv)).await?, rv),
        None => {
            let (kind, ns) = (filter.kind, filter.namespace.clone());
            let (objects, rv) = blocking(store, move |s| s.list(kind, ns.as_deref())).await?;
            for object in objects.iter().filter(|o| filter.matches(o)) {
                pending.push_back(event_line("ADDED", object));
            }
            (blocking(store, move |s| s.watch(rv)).await?, rv)
        }
    };
    let (batches_tx, batches) = mpsc::channel(4);
    tokio::spawn(pump(watch, batches_tx));
    let mut bookmarks =
        tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Stream {
        filter,
        pending,
        batches,
        sent_rv: from_rv,
        bookmarks,
        deadline: start.timeout.map(|t| Instant::now() + t),
        shutdown,
        finished: false,
        _slot: Box::new(slot),
    };
    let body = Body::from_stream(futures_util::stream::unfold(state, |mut s| async move {
        let line = s.next_line().await?;
        Some((Ok::<Bytes, Infallible>(line), s))
    }));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Most events moved to the stream at once.
const MAX_BATCH: usize = 512;

/// Store events, in batches that end on a transaction boundary unless `partial`.
struct Batch {
    events: Vec<EncodedEvent>,
    partial: bool,
}

/// Moves store events into a channel, so the stream can wait on it alongside timers without
/// cancelling a store read; stops when the stream is dropped or the watch fails. A batch takes
/// every event already in the log: the log appends a transaction at once, so a batch that was
/// not cut short ends on a transaction boundary, where a bookmark is safe to resume from.
async fn pump(mut watch: Watch, batches: mpsc::Sender<Result<Batch, StoreError>>) {
    loop {
        let first = tokio::select! {
            _ = batches.closed() => return,
            event = watch.next_encoded() => event,
        };
        let mut failure = None;
        let batch = first.map(|first| {
            let mut events = vec![first];
            while events.len() < MAX_BATCH {
                match watch.try_next_encoded() {
                    Ok(Some(event)) => events.push(event),
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let partial = events.len() >= MAX_BATCH;
            Batch { events, partial }
        });
        let stop = batch.is_err() || failure.is_some();
        if batches.send(batch).await.is_err() {
            return;
        }
        if let Some(e) = failure {
            let _ = batches.send(Err(e)).await;
        }
        if stop {
            return;
        }
    }
}

struct Stream {
    filter: WatchFilter,
    /// Lines ready to send (the initial objects, the matching events of the last batch).
    pending: VecDeque<Bytes>,
    batches: mpsc::Receiver<Result<Batch, StoreError>>,
    /// Every change up to this resourceVersion has been sent (or filtered out).
    sent_rv: u64,
    bookmarks: Interval,
    deadline: Option<Instant>,
    shutdown: Option<ShutdownSignal>,
    finished: bool,
    /// Held for the life of the stream: the client's open-watch count.
    _slot: Box<dyn Send + Sync>,
}

impl Stream {
    async fn next_line(&mut self) -> Option<Bytes> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        if self.finished {
            return None;
        }
        let deadline = self.deadline;
        let shutdown = self.shutdown.clone();
        let until_deadline = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let until_shutdown = async move {
            match shutdown {
                Some(signal) => signal.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(until_deadline, until_shutdown);
        loop {
            tokio::select! {
                batch = self.batches.recv() => match batch {
                    Some(Ok(batch)) => {
                        self.take(batch);
                        if let Some(line) = self.pending.pop_front() {
                            return Some(line);
                        }
                    }
                    Some(Err(e)) => {
                        self.finished = true;
                        return Some(error_line(&ApiError::from(e)));
                    }
                    None => return None,
                },
                _ = self.bookmarks.tick() => return Some(bookmark_line(self.filter.kind, self.sent_rv)),
                _ = &mut until_deadline => return None,
                _ = &mut until_shutdown => return None,
            }
        }
    }

    fn take(&mut self, batch: Batch) {
        let mut last_rv = self.sent_rv;
        for event in &batch.events {
            last_rv = event.resource_version;
            if self.filter.matches_encoded(&event.object) {
                self.pending.push_back(encoded_event_line(
                    type_name(event.event_type),
                    &event.object,
                ));
            }
        }
        // A cut-short batch may have stopped inside a transaction.
        let complete_rv = if batch.partial {
            last_rv.saturating_sub(1)
        } else {
            last_rv
        };
        self.sent_rv = self.sent_rv.max(complete_rv);
    }
}

fn type_name(t: WatchEventType) -> &'static str {
    match t {
        WatchEventType::Added => "ADDED",
        WatchEventType::Modified => "MODIFIED",
        WatchEventType::Deleted => "DELETED",
    }
}

fn line(value: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

/// `{"type":"ADDED","object":{...}}` and a newline.
pub fn event_line(event_type: &str, object: &Value) -> Bytes {
    let mut bytes = Vec::with_capacity(256);
    bytes.extend_from_slice(br#"{"type":""#);
    bytes.extend_from_slice(event_type.as_bytes());
    bytes.extend_from_slice(br#"","object":"#);
    if serde_json::to_writer(&mut bytes, object).is_err() {
        return error_line(&ApiError::internal("could not encode an object"));
    }
    bytes.extend_from_slice(b"}\n");
    Bytes::from(bytes)
}

/// [`event_line`] of an object already in its JSON encoding (as the store keeps it).
fn encoded_event_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut bytes = Vec::with_capacity(object.len() + 32);
    bytes.extend_from_slice(br#"{"type":""#);
    bytes.extend_from_slice(event_type.as_bytes());
    bytes.extend_from_slice(br#"","object":"#);
    bytes.extend_from_slice(object);
    bytes.extend_from_slice(b"}\n");
    Bytes::from(bytes)
}

fn error_line(error: &ApiError) -> Bytes {
    line(&json!({ "type": "ERROR", "object": error.to_status() }))
}

fn bookmark_line(kind: Kind, rv: u64) -> Bytes {
    line(&json!({
        "type": "BOOKMARK",
        "object": {
            "kind": kind.name(),
            "apiVersion": kind.api_version(),
            "metadata": { "resourceVersion": rv.to_string() },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lines_are_json() {
        let obj = json!({"kind": "Pod", "metadata": {"name": "p"}});
        let bytes = event_line("MODIFIED", &obj);
        assert!(bytes.ends_with(b"\n"));
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v, json!({"type": "MODIFIED", "object": obj}));
        let v: Value = serde_json::from_slice(&bookmark_line(Kind::Pod, 9)).expect("json");
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "9");
        let gone = ApiError::from(StoreError::Gone {
            requested: 1,
            oldest: 3,
        });
        let v: Value = serde_json::from_slice(&error_line(&gone)).expect("json");
        assert_eq!(v["object"]["code"], 410);
    }

    #[test]
    fn encoded_events_filter_and_read_as_parsed_ones() {
        let objects = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "web", "labels": {"app": "shop"}, "ownerReferences": [{"kind": "ReplicaSet"}]}, "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}, "status": {"phase": "Running"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "b", "labels": {"app": "blog"}}, "spec": {"nodeName": "n2"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "web", "labels": {"app": "shop"}}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "web"}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "no-kind", "labels": {"kind": "Pod"}}}),
            json!({"apiVersion": "x\"kind\":\"Pod", "kind": "Event", "metadata": {"name": "e"}}),
        ];
        let filters = [
            (Kind::Pod, None, "", ""),
            (Kind::Pod, None, "", "spec.nodeName=n1"),
            (Kind::Pod, Some("web"), "app=shop", ""),
            (
                Kind::Pod,
                None,
                "app!=shop",
                "status.phase!=Running,metadata.name!=zz",
            ),
            (Kind::Service, Some("web"), "", "metadata.name=a"),
            (Kind::Event, None, "", ""),
        ];
        for (kind, ns, labels, fields) in filters {
            let filter = WatchFilter {
                kind,
                namespace: ns.map(str::to_string),
                selector: Selector::parse(labels).expect("selector"),
                fields: FieldSelector::parse(kind, fields).expect("fields"),
            };
            for object in &objects {
                let encoded = object.to_string();
                assert_eq!(
                    filter.matches_encoded(encoded.as_bytes()),
                    filter.matches(object),
                    "{filter:?} on {object}"
                );
            }
        }
        assert_eq!(top_level_kind(b"[1]"), None);
        assert_eq!(top_level_kind(b"{\"kind\""), None);
        let object = objects[0].to_string();
        let line = encoded_event_line("MODIFIED", object.as_bytes());
        let parsed: Value = serde_json::from_slice(&line).expect("json");
        assert_eq!(parsed, json!({"type": "MODIFIED", "object": objects[0]}));
        assert_eq!(line, event_line("MODIFIED", &objects[0]));
    }

    #[test]
    fn filter_by_kind_namespace_and_labels() {
        let filter = WatchFilter {
            kind: Kind::Pod,
            namespace: Some("web".into()),
            selector: Selector::parse("app=shop").expect("selector"),
            fields: FieldSelector::default(),
        };
        let pod = |ns: &str, app: &str| json!({"kind": "Pod", "metadata": {"name": "p", "namespace": ns, "labels": {"app": app}}});
        assert!(filter.matches(&pod("web", "shop")));
        assert!(!filter.matches(&pod("other", "shop")));
        assert!(!filter.matches(&pod("web", "blog")));
        let svc = json!({"kind": "Service", "metadata": {"name": "p", "namespace": "web", "labels": {"app": "shop"}}});
        assert!(!filter.matches(&svc));
    }
}
