//! Watches: a chunked stream of newline-delimited JSON events, Kubernetes style
//! (`{"type":"ADDED","object":{...}}`), from a resourceVersion.
//!
//! Every watch reads every change of the store, so the cost per change and watch must stay
//! small (hundreds of nodes each watch their pods, Services and Endpoints): a change is
//! filtered on its stored JSON (the kind read from its first bytes; the fields selectors use
//! parsed only when the kind matches and the watch has selectors) and sent as those bytes,
//! never parsed whole nor encoded again.

use super::fields::{FieldSelector, pointer};
use super::objects::blocking;
use super::status::ApiError;
use crate::api::selector::Selector;
use crate::api::{Kind, ObjectMeta};
use crate::store::watch::EncodedEvent;
use crate::store::{Store, StoreError, Watch, WatchEventType};
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use serde::de::value::MapAccessDeserializer;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
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

    /// [`WatchFilter::matches`] on a change as the store logs it. The kind comes with the
    /// event, so a watch of another kind passes it by unread; only a watch that selects on
    /// more than the kind reads the fields selectors look at, borrowed from the JSON: every
    /// watch runs this on every change, so it allocates nothing but the list of label pairs.
    pub fn matches_event(&self, event: &EncodedEvent) -> bool {
        if event.kind != self.kind {
            return false;
        }
        if self.namespace.is_none() && self.selector.is_empty() && self.fields.is_empty() {
            return true;
        }
        match serde_json::from_slice::<Head>(&event.object) {
            Ok(head) => head.matches(self),
            Err(_) => false,
        }
    }
}

/// The fields a watch filter can look at (name, namespace, labels, and the fields of field
/// selectors); serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    metadata: Member<HeadMeta<'a>>,
    #[serde(borrow, default)]
    spec: Member<HeadSpec<'a>>,
    #[serde(borrow, default)]
    status: Member<HeadStatus<'a>>,
}

/// Visitor methods reading a number, boolean or null as `$skipped`.
macro_rules! skip_scalars {
    ($value:ty, $skipped:expr) => {
        fn visit_bool<E>(self, _: bool) -> Result<$value, E> {
            Ok($skipped)
        }
        fn visit_i64<E>(self, _: i64) -> Result<$value, E> {
            Ok($skipped)
        }
        fn visit_u64<E>(self, _: u64) -> Result<$value, E> {
            Ok($skipped)
        }
        fn visit_f64<E>(self, _: f64) -> Result<$value, E> {
            Ok($skipped)
        }
        fn visit_unit<E>(self) -> Result<$value, E> {
            Ok($skipped)
        }
    };
}

/// A member that is read only when it is an object (anything else reads as absent, as
/// `Value::pointer` finds nothing under it).
struct Member<T>(Option<T>);

impl<T> Default for Member<T> {
    fn default() -> Self {
        Member(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Member<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = Member<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Member<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|t| Member(Some(t)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Member<T>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Member(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<Member<T>, E> {
                Ok(Member(None))
            }
            skip_scalars!(Member<T>, Member(None));
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(serde::Deserialize)]
struct HeadMeta<'a> {
    #[serde(borrow, default)]
    name: Text<'a>,
    #[serde(borrow, default)]
    namespace: Text<'a>,
    #[serde(borrow, default)]
    labels: Labels<'a>,
}

#[derive(serde::Deserialize)]
struct HeadSpec<'a> {
    #[serde(borrow, default, rename = "nodeName")]
    node_name: Text<'a>,
}

#[derive(serde::Deserialize)]
struct HeadStatus<'a> {
    #[serde(borrow, default)]
    phase: Text<'a>,
}

impl Head<'_> {
    /// The same decision as [`WatchFilter::matches`] on the whole object (the kind is
    /// already known to match).
    fn matches(&self, filter: &WatchFilter) -> bool {
        let meta = self.metadata.0.as_ref();
        if let Some(ns) = &filter.namespace {
            let namespace = meta.and_then(|m| m.namespace.get()).unwrap_or("default");
            if namespace != ns {
                return false;
            }
        }
        filter
            .selector
            .matches_by(|key| meta.and_then(|m| m.labels.get(key)))
            && filter.fields.matches_by(|pointer| self.field(pointer))
    }

    /// A field by its JSON pointer, for each of [`pointer`]'s.
    fn field(&self, field: &str) -> Option<&str> {
        match field {
            pointer::NAME => self.metadata.0.as_ref()?.name.get(),
            pointer::NAMESPACE => self.metadata.0.as_ref()?.namespace.get(),
            pointer::NODE_NAME => self.spec.0.as_ref()?.node_name.get(),
            pointer::PHASE => self.status.0.as_ref()?.phase.get(),
            _ => None,
        }
    }
}

/// A JSON value read as a string when it is one, borrowed from the input unless it has
/// escapes; any other value is skipped and reads as absent, as `Value::as_str` does.
#[derive(Default)]
struct Text<'a>(Option<Cow<'a, str>>);

impl Text<'_> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match deserializer.deserialize_any(Read)? {
            Leaf::Text(text) => Text(Some(text)),
            Leaf::Pairs(_) | Leaf::Other => Text(None),
        })
    }
}

/// An object's labels as read pairs (`labels` that is not an object reads as none).
#[derive(Default)]
struct Labels<'a>(Vec<(Text<'a>, Text<'a>)>);

impl Labels<'_> {
    /// The last value of `key`, as a JSON object keeps the last of duplicate keys.
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.get() == Some(key))
            .and_then(|(_, v)| v.get())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match deserializer.deserialize_any(Read)? {
            Leaf::Pairs(pairs) => Labels(pairs),
            Leaf::Text(_) | Leaf::Other => Labels::default(),
        })
    }
}

/// Any JSON value, as much of it as [`Text`] and [`Labels`] use.
enum Leaf<'a> {
    Text(Cow<'a, str>),
    /// An object's members whose keys are strings (all, in JSON), values read as [`Text`].
    Pairs(Vec<(Text<'a>, Text<'a>)>),
    /// A number, boolean, null or array, skipped.
    Other,
}

struct Read;

impl<'de> Visitor<'de> for Read {
    type Value = Leaf<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Leaf<'de>, E> {
        Ok(Leaf::Text(Cow::Owned(v)))
    }
    skip_scalars!(Leaf<'de>, Leaf::Other);
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Leaf<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Leaf::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Leaf<'de>, A::Error> {
        let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4));
        while let Some(pair) = map.next_entry::<Text, Text>()? {
            pairs.push(pair);
        }
        Ok(Leaf::Pairs(pairs))
    }
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
    let (watch, from_rv, pending) = match start.resource_version.filter(|rv| *rv > 0) {
        Some(rv) => (
            blocking(store, move |s| s.watch(rv)).await?,
            rv,
            VecDeque::new(),
        ),
        None => {
            // Each object encoded as it is visited: the start holds lines, not JSON trees.
            let matching = filter.clone();
            let (lines, rv) = blocking(store, move |s| {
                let mut lines = VecDeque::new();
                let rv = s.visit(matching.kind, matching.namespace.as_deref(), &mut |o| {
                    if matching.matches(&o) {
                        lines.push_back(event_line("ADDED", &o));
                    }
                })?;
                Ok((lines, rv))
            })
            .await?;
            (blocking(store, move |s| s.watch(rv)).await?, rv, lines)
        }
    };
    let mut bookmarks =
        tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL);
    bookmarks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let state = Stream {
        filter,
        pending,
        watch,
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

/// Most store events filtered at once before their lines are sent.
const MAX_BATCH: usize = 512;

struct Stream {
    filter: WatchFilter,
    /// Lines ready to send (the initial objects, the matching events of the last batch).
    pending: VecDeque<Bytes>,
    /// Read directly by the stream: waiting on it is cancel-safe (it only waits for the log
    /// to grow), so a bookmark or the deadline winning the race loses no event.
    watch: Watch,
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
                event = self.watch.next_encoded() => {
                    self.take(event);
                    if let Some(line) = self.pending.pop_front() {
                        return Some(line);
                    }
                    if self.finished {
                        return None;
                    }
                }
                _ = self.bookmarks.tick() => return Some(bookmark_line(self.filter.kind, self.sent_rv)),
                _ = &mut until_deadline => return None,
                _ = &mut until_shutdown => return None,
            }
        }
    }

    /// Filters `first` and the events already in the log after it (at most [`MAX_BATCH`])
    /// into lines. The log appends a transaction at once, so a batch that reads the log to
    /// its end stops on a transaction boundary, where a bookmark is safe to resume from; one
    /// cut short may have stopped inside one. A failure (`Gone`) is the last line.
    fn take(&mut self, first: Result<EncodedEvent, StoreError>) {
        let mut next = first.map(Some);
        let mut last_rv = self.sent_rv;
        let mut taken = 0;
        let complete = loop {
            let event = match next {
                Ok(Some(event)) => event,
                Ok(None) => break true,
                Err(e) => {
                    self.pending.push_back(error_line(&ApiError::from(e)));
                    self.finished = true;
                    break true;
                }
            };
            last_rv = event.resource_version;
            if self.filter.matches_event(&event) {
                self.pending.push_back(encoded_event_line(
                    type_name(event.event_type),
                    &event.object,
                ));
            }
            taken += 1;
            if taken >= MAX_BATCH {
                break false;
            }
            next = self.watch.try_next_encoded();
        };
        let complete_rv = if complete {
            last_rv
        } else {
            last_rv.saturating_sub(1)
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
            json!({"apiVersion": "x\"kind\":\"Pod", "kind": "Event", "metadata": {"name": "e"}}),
            // Escaped strings (read as owned copies) and values that are not strings.
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a\"b", "namespace": "w\"b", "labels": {"app": "sh\nop", "tier\t": "x"}}, "spec": {"nodeName": "n\\1"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 7, "namespace": ["web"], "labels": {"app": {"x": 1}, "tier": null}}, "spec": {"nodeName": true}, "status": {"phase": 1.5}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "l", "labels": ["app", "shop"]}, "spec": [], "status": "Running"}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "d", "namespace": "default", "labels": {"app": "shop", "tier": "web"}}}),
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
            (Kind::Pod, Some("default"), "", ""),
            (Kind::Pod, Some("w\"b"), "app!=shop", "spec.nodeName=n\\1"),
            (Kind::Pod, None, "tier", "metadata.namespace!=web"),
            (
                Kind::Pod,
                None,
                "!tier,app notin (blog)",
                "metadata.name!=a\"b",
            ),
            (Kind::Pod, None, "app in (shop,blog)", "spec.nodeName="),
            (Kind::Pod, None, "", "status.phase="),
        ];
        for (kind, ns, labels, fields) in filters {
            let filter = WatchFilter {
                kind,
                namespace: ns.map(str::to_string),
                selector: Selector::parse(labels).expect("selector"),
                fields: FieldSelector::parse(kind, fields).expect("fields"),
            };
            for object in &objects {
                // The store gives an event the kind of the object's key, which is its `kind`.
                let Some(kind) = object["kind"].as_str().and_then(Kind::from_name) else {
                    continue;
                };
                let event = EncodedEvent {
                    event_type: WatchEventType::Modified,
                    kind,
                    resource_version: 1,
                    object: object.to_string().into_bytes().into(),
                };
                assert_eq!(
                    filter.matches_event(&event),
                    filter.matches(object),
                    "{filter:?} on {object}"
                );
            }
        }
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
