//! The agents' HTTP client of the API: several server URLs (the next one is tried when one does
//! not answer), the join token from a file, the Node's registration and status, and a
//! list-then-watch (the node's pods, every Service, every Endpoints) that resumes from the last
//! resourceVersion it saw and lists again when the server no longer holds it (410).

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How long an ordinary request may take; watches are bounded by `WATCH_SECONDS` instead.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Asked of the server per watch, so that a silently dead connection is noticed.
const WATCH_SECONDS: u64 = 300;
/// How long a watch may wait for the server's answer (its headers come at once from a live
/// server): a server that accepts connections but does not answer (paused, wedged) is then
/// left for the next one.
const WATCH_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// A watch that receives nothing for this long (three of the server's 15 s bookmarks) is
/// taken for dead and resumed, on the next server if this one does not answer.
const WATCH_IDLE_TIMEOUT: Duration = Duration::from_secs(45);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("token file {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("no API server answered ({servers}): {last}")]
    Unreachable { servers: String, last: String },
    #[error("{method} {path}: {code} {reason}: {message}")]
    Api {
        method: String,
        path: String,
        code: u16,
        reason: String,
        message: String,
    },
    #[error("{method} {path}: {reason}")]
    Invalid {
        method: String,
        path: String,
        reason: String,
    },
}

impl ClientError {
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(404)
    }
    /// A resourceVersion conflict or an object that already exists.
    pub fn is_conflict(&self) -> bool {
        self.code() == Some(409)
    }
    /// The resourceVersion is too old: list again.
    pub fn is_gone(&self) -> bool {
        self.code() == Some(410)
    }
}

/// Back-off before retry number `attempt` (0-based): 200 ms doubling to 10 s, scaled by
/// `jitter` in [0, 1) into [50%, 100%) so that agents restarted together do not retry together.
pub fn backoff_with_jitter(attempt: u32, jitter: f64) -> Duration {
    let base = 200u64.saturating_mul(1u64 << attempt.min(16)).min(10_000);
    let scale = 0.5 + jitter.clamp(0.0, 1.0) / 2.0;
    Duration::from_millis((base as f64 * scale) as u64)
}

/// `backoff_with_jitter` with a random jitter.
pub fn backoff(attempt: u32) -> Duration {
    backoff_with_jitter(attempt, rand::random::<f64>())
}

/// A change to the objects an agent follows (its pods, every Service, every Endpoints), each
/// object as `O`: its JSON, or what [`FromObject`] made of it.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent<O = Value> {
    /// Every object that matches, after a (re)list: objects not in it are gone.
    Listed(Vec<O>),
    /// An object was added or changed.
    Applied(O),
    /// An object was deleted (its last state).
    Deleted(O),
}

impl<O> WatchEvent<O> {
    /// The same event with each object turned into `f`'s.
    pub fn map<P>(self, mut f: impl FnMut(O) -> P) -> WatchEvent<P> {
        match self {
            WatchEvent::Listed(items) => WatchEvent::Listed(items.into_iter().map(f).collect()),
            WatchEvent::Applied(o) => WatchEvent::Applied(f(o)),
            WatchEvent::Deleted(o) => WatchEvent::Deleted(f(o)),
        }
    }
}

/// What a follower keeps of each object it receives, made from the object's JSON.
///
/// Why not always the JSON: a list is parsed object by object into this, so that only one
/// object's JSON tree exists at a time. A whole list of 2,000 Services as JSON trees (and
/// the copy its items were taken into) was ~20 MB at the agent's start, more than all it
/// keeps; glibc's heap grew to it and stayed fragmented (docs/performance.md).
pub trait FromObject: Send + 'static {
    fn from_object(object: Value) -> Self;
}

impl FromObject for Value {
    fn from_object(object: Value) -> Self {
        object
    }
}

/// One item of a list's `items`, parsed alone into `O`.
struct Each<O>(O);

impl<'de, O: FromObject> serde::Deserialize<'de> for Each<O> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Value::deserialize(d).map(|object| Each(O::from_object(object)))
    }
}

/// A list answer: its resourceVersion and its items, each parsed alone.
#[derive(serde::Deserialize)]
#[serde(bound = "O: FromObject")]
struct ListAnswer<O> {
    #[serde(default)]
    metadata: Option<ListMeta>,
    #[serde(default)]
    items: Option<Vec<Each<O>>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: Option<String>,
}

/// The pods' events are the generic ones.
pub type PodEvent = WatchEvent;

pub struct AgentClient {
    servers: Vec<String>,
    token: String,
    http: reqwest::Client,
    /// The server that answered last: tried first.
    current: AtomicUsize,
    /// [`WATCH_ANSWER_TIMEOUT`] and [`WATCH_IDLE_TIMEOUT`] (shorter in tests).
    watch_answer: Duration,
    watch_idle: Duration,
}

impl AgentClient {
    pub fn new(servers: Vec<String>, token: String) -> Result<AgentClient, ClientError> {
        AgentClient::with_ca(servers, token, None)
    }

    /// A client that trusts only the CA certificates (PEM) in `ca` for `https://` servers,
    /// not the system's roots: the agent pins its control plane's CA.
    pub fn with_ca(
        servers: Vec<String>,
        token: String,
        ca: Option<&Path>,
    ) -> Result<AgentClient, ClientError> {
        let servers: Vec<String> = servers
            .iter()
            .flat_map(|s| s.split(','))
            .map(|s| s.trim().trim_end_matches('/').to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let invalid = |reason: String| ClientError::Invalid {
            method: "connect".into(),
            path: String::new(),
            reason,
        };
        if servers.is_empty() {
            return Err(invalid("no server URL given (--server URL[,URL])".into()));
        }
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(ca) = ca {
            for cert in read_ca(ca).map_err(invalid)? {
                builder = builder.add_root_certificate(cert);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        let http = builder
            .build()
            .map_err(|e| invalid(format!("building the HTTP client: {e}")))?;
        Ok(AgentClient {
            servers,
            token,
            http,
            current: AtomicUsize::new(0),
            watch_answer: WATCH_ANSWER_TIMEOUT,
            watch_idle: WATCH_IDLE_TIMEOUT,
        })
    }

    /// Shorter watch timeouts, for tests.
    #[doc(hidden)]
    pub fn set_watch_timeouts(&mut self, answer: Duration, idle: Duration) {
        self.watch_answer = answer;
        self.watch_idle = idle;
    }

    /// Reads the bearer token from `path` (surrounding whitespace ignored).
    pub fn from_token_file(servers: Vec<String>, path: &Path) -> Result<AgentClient, ClientError> {
        let token_error = |reason: String| ClientError::Token {
            path: path.display().to_string(),
            reason,
        };
        let token = std::fs::read_to_string(path)
            .map_err(|e| token_error(e.to_string()))?
            .trim()
            .to_string();
        if token.is_empty() {
            return Err(token_error("the file is empty".into()));
        }
        AgentClient::new(servers, token)
    }

    /// Sends a request to the current server, moving to the next ones when a server cannot
    /// be reached. `timeout: None` is for watches.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, ClientError> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for step in 0..self.servers.len() {
            let index = (start + step) % self.servers.len();
            let url = format!("{}{path}", self.servers[index]);
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .query(query);
            if let Some(body) = body {
                request = request.json(body);
            }
            let sent = match timeout {
                Some(timeout) => request.timeout(timeout).send().await.map_err(Some),
                // A watch has no overall timeout, but its answer must start in time.
                None => match tokio::time::timeout(self.watch_answer, request.send()).await {
                    Ok(sent) => sent.map_err(Some),
                    Err(_) => Err(None),
                },
            };
            match sent {
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(None) => {
                    tracing::debug!(server = %self.servers[index], "no answer to a watch");
                    last = format!(
                        "{}: no answer in {:?}",
                        self.servers[index], self.watch_answer
                    );
                }
                Err(Some(e)) if e.is_connect() || e.is_timeout() || e.is_request() => {
                    tracing::debug!(server = %self.servers[index], "not answering: {e}");
                    last = format!(
                        "{}: {}",
                        self.servers[index],
                        crate::errors::error_chain(&e)
                    );
                }
                Err(Some(e)) => {
                    return Err(ClientError::Invalid {
                        method: method.to_string(),
                        path: path.to_string(),
                        reason: e.to_string(),
                    });
                }
            }
        }
        Err(ClientError::Unreachable {
            servers: self.servers.join(", "),
            last,
        })
    }

    /// A request whose answer is one JSON document; non-2xx answers become `ClientError::Api`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, bytes) = self.answer(&method, path, query, body).await?;
        if !status.is_success() {
            return Err(refused(&method, path, status, &bytes));
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// The status and body of one request's answer.
    async fn answer(
        &self,
        method: &Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<(StatusCode, bytes::Bytes), ClientError> {
        let response = self
            .send(method.clone(), path, query, body, Some(REQUEST_TIMEOUT))
            .await?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ClientError::Invalid {
            method: method.to_string(),
            path: path.to_string(),
            reason: format!("reading the answer: {e}"),
        })?;
        Ok((status, bytes))
    }

    /// Registers node `name` (this client holds the join token): its new credential.
    pub async fn register(&self, name: &str) -> Result<String, ClientError> {
        let path = crate::server::path::REGISTER_PATH;
        let answer = self
            .call(Method::POST, path, &[], Some(&json!({ "name": name })))
            .await?;
        answer
            .get("credential")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .ok_or_else(|| ClientError::Invalid {
                method: "POST".into(),
                path: path.into(),
                reason: "the answer holds no credential".into(),
            })
    }

    /// Creates the Node; `None` when it already exists (a restart: its labels are kept).
    pub async fn create_node(&self, node: &Value) -> Result<Option<Value>, ClientError> {
        match self
            .call(Method::POST, "/api/v1/nodes", &[], Some(node))
            .await
        {
            Ok(created) => Ok(Some(created)),
            Err(e) if e.is_conflict() => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn get_node(&self, name: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, &format!("/api/v1/nodes/{name}"), &[], None)
            .await
    }

    /// Replaces the Node's status (guarded by the body's resourceVersion, when it has one).
    pub async fn put_node_status(&self, node: &Value) -> Result<Value, ClientError> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let path = format!("/api/v1/nodes/{name}/status");
        self.call(Method::PUT, &path, &[], Some(node)).await
    }

    pub async fn get_pod(&self, namespace: &str, name: &str) -> Result<Value, ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        self.call(Method::GET, &path, &[], None).await
    }

    /// Replaces a pod's status (guarded by the body's resourceVersion, when it has one).
    pub async fn put_pod_status(&self, pod: &Value) -> Result<Value, ClientError> {
        let (namespace, name) = namespace_and_name(pod);
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}/status");
        self.call(Method::PUT, &path, &[], Some(pod)).await
    }

    /// Deletes a pod the node has stopped; a pod already gone is not an error.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/pods/{name}");
        match self.call(Method::DELETE, &path, &[], None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Posts an Event (the server counts repeats of the same reason and message).
    pub async fn post_event(&self, namespace: &str, event: &Value) -> Result<(), ClientError> {
        self.call(
            Method::POST,
            &format!("/api/v1/namespaces/{namespace}/events"),
            &[],
            Some(event),
        )
        .await
        .map(drop)
    }

    /// Every Node (the agents' routes to other nodes' pod CIDRs come from them).
    pub async fn list_nodes(&self) -> Result<Vec<Value>, ClientError> {
        let (nodes, _) = self.list("/api/v1/nodes", None).await?;
        Ok(nodes)
    }

    /// Pods in every namespace matching `field_selector`, and the list's resourceVersion.
    pub async fn list_pods(&self, field_selector: &str) -> Result<(Vec<Value>, u64), ClientError> {
        self.list("/api/v1/pods", Some(field_selector)).await
    }

    /// The objects of a list path (e.g. `/api/v1/services`), and the list's resourceVersion.
    pub async fn list<O: FromObject>(
        &self,
        path: &str,
        field_selector: Option<&str>,
    ) -> Result<(Vec<O>, u64), ClientError> {
        let query: Vec<(&str, &str)> = field_selector
            .map(|s| ("fieldSelector", s))
            .into_iter()
            .collect();
        let method = Method::GET;
        let (status, bytes) = self.answer(&method, path, &query, None).await?;
        if !status.is_success() {
            return Err(refused(&method, path, status, &bytes));
        }
        // Not a list (a proxy's page, a cut-off body): an error, not an empty list, which
        // would mean that every object is gone.
        let list: ListAnswer<O> =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Invalid {
                method: method.to_string(),
                path: path.to_string(),
                reason: format!("the list does not parse: {e}"),
            })?;
        let rv = list
            .metadata
            .and_then(|m| m.resource_version)
            .and_then(|rv| rv.parse().ok())
            .unwrap_or(0);
        let items = list.items.unwrap_or_default();
        Ok((items.into_iter().map(|Each(o)| o).collect(), rv))
    }

    /// Follows the pods matching `field_selector` (see [`AgentClient::follow`]).
    pub async fn follow_pods(
        &self,
        field_selector: &str,
        events: mpsc::Sender<WatchEvent>,
        shutdown: watch::Receiver<bool>,
    ) {
        self.follow("/api/v1/pods", Some(field_selector), events, shutdown)
            .await;
    }

    /// Follows the objects of a list `path` until `shutdown`, as an informer does: lists,
    /// then watches from the list's resourceVersion; after a broken connection watches again
    /// from the last resourceVersion seen; lists again on 410. Ends when `events` is closed.
    pub async fn follow<O: FromObject>(
        &self,
        path: &str,
        field_selector: Option<&str>,
        events: mpsc::Sender<WatchEvent<O>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        let mut from: Option<u64> = None;
        loop {
            if *shutdown.borrow() || events.is_closed() {
                return;
            }
            let step = async {
                match from {
                    None => {
                        let (items, rv) = self.list(path, field_selector).await?;
                        if events.send(WatchEvent::Listed(items)).await.is_err() {
                            return Ok(WatchEnd::Closed);
                        }
                        Ok(WatchEnd::Resume(rv))
                    }
                    Some(rv) => self.watch(path, field_selector, rv, &events).await,
                }
            };
            let outcome = tokio::select! {
                outcome = step => outcome,
                _ = super::stopped(&mut shutdown) => return,
            };
            match outcome {
                Ok(WatchEnd::Closed) => return,
                Ok(WatchEnd::Resume(rv)) => {
                    failures = 0;
                    from = Some(rv);
                    continue;
                }
                Ok(WatchEnd::Relist) => {
                    tracing::info!("{path}: the watch expired; listing again");
                    from = None;
                    continue;
                }
                Err(e) if e.is_gone() => {
                    from = None;
                    continue;
                }
                Err(e) => tracing::warn!("following {path}: {e}"),
            }
            let wait = backoff(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = super::stopped(&mut shutdown) => return,
            }
        }
    }

    /// One watch from `rv`; returns where to resume.
    async fn watch<O: FromObject>(
        &self,
        path: &str,
        field_selector: Option<&str>,
        rv: u64,
        events: &mpsc::Sender<WatchEvent<O>>,
    ) -> Result<WatchEnd, ClientError> {
        let rv_text = rv.to_string();
        let seconds = WATCH_SECONDS.to_string();
        let mut query = vec![
            ("watch", "true"),
            ("resourceVersion", rv_text.as_str()),
            ("timeoutSeconds", seconds.as_str()),
        ];
        if let Some(selector) = field_selector {
            query.push(("fieldSelector", selector));
        }
        let response = self.send(Method::GET, path, &query, None, None).await?;
        let status = response.status();
        if !status.is_success() {
            let body: Value = response.json().await.unwrap_or(Value::Null);
            return Err(api_error(
                &Method::GET,
                &format!("{path}?watch"),
                status,
                &body,
            ));
        }
        let mut last_rv = rv;
        let mut stream = response.bytes_stream();
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let Ok(next) = tokio::time::timeout(self.watch_idle, stream.next()).await else {
                // Not even a bookmark: the server or the path to it is gone.
                tracing::info!("{path}: the watch went silent; resuming");
                self.move_on();
                return Ok(WatchEnd::Resume(last_rv));
            };
            let Some(chunk) = next else {
                break;
            };
            let Ok(chunk) = chunk else {
                // A broken connection: resume from what was seen.
                return Ok(WatchEnd::Resume(last_rv));
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Ok(mut event) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let object = event.get_mut("object").map(Value::take).unwrap_or_default();
                let rv = resource_version_of(&object);
                let watch_event = match event.get("type").and_then(Value::as_str) {
                    Some("ADDED" | "MODIFIED") => WatchEvent::Applied(O::from_object(object)),
                    Some("DELETED") => WatchEvent::Deleted(O::from_object(object)),
                    Some("BOOKMARK") => {
                        last_rv = last_rv.max(rv);
                        continue;
                    }
                    Some("ERROR") => {
                        if object.get("code").and_then(Value::as_u64) == Some(410) {
                            return Ok(WatchEnd::Relist);
                        }
                        return Ok(WatchEnd::Resume(last_rv));
                    }
                    _ => continue,
                };
                last_rv = last_rv.max(rv);
                if events.send(watch_event).await.is_err() {
                    return Ok(WatchEnd::Closed);
                }
            }
        }
        Ok(WatchEnd::Resume(last_rv))
    }
}

impl AgentClient {
    /// Makes the next server the first one tried (the current one stopped answering).
    fn move_on(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.servers.len();
        self.current.store(next, Ordering::Relaxed);
    }
}

/// The certificates of a PEM file (a CA, or a bundle of them).
pub fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("--ca {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("--ca {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("--ca {}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

enum WatchEnd {
    Resume(u64),
    Relist,
    Closed,
}

/// The error of an answer whose status is not a success, from its body (a Status, or not).
fn refused(method: &Method, path: &str, status: StatusCode, body: &[u8]) -> ClientError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    api_error(method, path, status, &value)
}

fn api_error(method: &Method, path: &str, status: StatusCode, body: &Value) -> ClientError {
    let text = |field: &str| {
        body.get(field)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    ClientError::Api {
        method: method.to_string(),
        path: path.to_string(),
        code: status.as_u16(),
        reason: text("reason"),
        message: text("message"),
    }
}

fn resource_version_of(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A pod's namespace (default `default`) and name.
pub fn namespace_and_name(pod: &Value) -> (String, String) {
    let field = |f: &str| {
        pod.pointer(&format!("/metadata/{f}"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    (
        field("namespace").unwrap_or_else(|| "default".into()),
        field("name").unwrap_or_default(),
    )
}

/// The body of a status write: the object with `status` replaced.
pub fn with_status(object: &Value, status: Value) -> Value {
    let mut body = object.clone();
    if let Some(fields) = body.as_object_mut() {
        fields.insert("status".into(), status);
    } else {
        body = json!({ "status": status });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`FromObject`] was given, in order.
    #[derive(Debug, PartialEq)]
    struct Seen(String);

    impl FromObject for Seen {
        fn from_object(object: Value) -> Self {
            Seen(object.to_string())
        }
    }

    #[test]
    fn a_list_answer_is_parsed_object_by_object() {
        let body = r#"{"kind":"ServiceList","metadata":{"resourceVersion":"42"},
            "items":[{"metadata":{"name":"a"}},{"spec":{"ports":"no"}},7]}"#;
        let list: Result<ListAnswer<Seen>, _> = serde_json::from_str(body);
        let Ok(list) = list else {
            panic!("the list parses");
        };
        let items: Vec<Seen> = list
            .items
            .unwrap_or_default()
            .into_iter()
            .map(|Each(o)| o)
            .collect();
        assert_eq!(
            items,
            vec![
                Seen(r#"{"metadata":{"name":"a"}}"#.into()),
                Seen(r#"{"spec":{"ports":"no"}}"#.into()),
                Seen("7".into()),
            ],
            "every item reaches FromObject, whatever it holds"
        );
        assert_eq!(
            list.metadata.and_then(|m| m.resource_version).as_deref(),
            Some("42")
        );
        // No items (an empty list may say null) is an empty list; not a list is an error.
        let empty: Result<ListAnswer<Seen>, _> =
            serde_json::from_str(r#"{"metadata":{},"items":null}"#);
        assert!(empty.is_ok_and(|l| l.items.is_none() && l.metadata.is_some()));
        assert!(serde_json::from_str::<ListAnswer<Seen>>("<html>").is_err());
        assert!(serde_json::from_str::<ListAnswer<Seen>>(r#"{"items":[1,"#).is_err());
    }

    #[test]
    fn backoff_doubles_caps_and_jitters() {
        assert_eq!(backoff_with_jitter(0, 0.0), Duration::from_millis(100));
        assert_eq!(
            backoff_with_jitter(0, 0.999_999),
            Duration::from_millis(199)
        );
        assert_eq!(backoff_with_jitter(3, 0.0), Duration::from_millis(800));
        assert_eq!(backoff_with_jitter(40, 0.0), Duration::from_secs(5));
        assert!(backoff_with_jitter(40, 0.99) < Duration::from_secs(10));
    }

    #[test]
    fn servers_are_split_and_trimmed() {
        let client = AgentClient::new(
            vec!["http://a:1/, http://b:2".into(), "http://c:3".into()],
            "t".into(),
        )
        .expect("client");
        assert_eq!(client.servers, ["http://a:1", "http://b:2", "http://c:3"]);
        assert!(AgentClient::new(vec![" ".into()], "t".into()).is_err());
    }
}
