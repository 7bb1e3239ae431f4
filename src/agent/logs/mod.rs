//! The agent's log endpoint, as the kubelet's:
//! `GET /containerLogs/{namespace}/{pod}/{container}?previous=&tailLines=&follow=` on
//! `--address:--port`. Only the control plane may ask: a request carries an HMAC of itself
//! keyed by the cluster's join token ([`sign`]), so the token never travels. Only pods bound
//! to this node are answered ([`PodDirectory`], kept by the agent's main loop).
//!
//! - [`files`]: `<id>.log` and `<id>.log.previous`, rotation, reading the last lines.
//! - [`sign`]: signing and checking requests.
//!
//! The logs come from a [`LogSource`]: the runtime's files (`tend agent`), or one fixed line
//! per container (`tend sim-node`, so the control plane's path can be tested without root).

pub mod files;
pub mod sign;

use std::collections::BTreeMap;
use std::io::{self, Cursor, Seek, SeekFrom};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::io::AsyncReadExt;

use super::pods::container_id;
use super::runtime::runc::{ContainerRuntime, Status};
use crate::server::ApiError;

/// The kubelet's port, the default of `--port`.
pub const DEFAULT_PORT: u16 = 10250;

/// The route served (axum syntax).
pub const ROUTE: &str = "/containerLogs/{namespace}/{pod}/{container}";

/// What a log request asks for (the query of both the agent's and the API's endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// The previous instance's log (after a restart).
    pub previous: bool,
    /// Only the last lines; `None` is the whole log.
    pub tail_lines: Option<u64>,
    /// Keep streaming until the container stops (or the client goes away).
    pub follow: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogQuery {
    previous: Option<String>,
    tail_lines: Option<String>,
    follow: Option<String>,
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("" | "false" | "0") => Ok(false),
        Some("true" | "1") => Ok(true),
        Some(other) => Err(format!("{name}={other:?} is not true or false")),
    }
}

impl LogOptions {
    /// Reads `previous`, `tailLines` and `follow` from a query string (other parameters are
    /// left to the caller). A negative `tailLines` means the whole log, as kubectl's `--tail -1`.
    pub fn from_query(query: Option<&str>) -> Result<LogOptions, String> {
        let uri: axum::http::Uri = format!("/?{}", query.unwrap_or_default())
            .parse()
            .map_err(|e| format!("invalid query: {e}"))?;
        let raw = Query::<RawLogQuery>::try_from_uri(&uri)
            .map_err(|e| format!("invalid query: {e}"))?
            .0;
        let tail_lines = match raw.tail_lines.as_deref() {
            None | Some("") => None,
            Some(text) => {
                let n: i64 = text
                    .parse()
                    .map_err(|_| format!("tailLines={text:?} is not a whole number"))?;
                u64::try_from(n).ok()
            }
        };
        Ok(LogOptions {
            previous: parse_bool("previous", raw.previous.as_deref())?,
            tail_lines,
            follow: parse_bool("follow", raw.follow.as_deref())?,
        })
    }

    /// The query parameters that say so (empty for the defaults).
    pub fn to_query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        if self.previous {
            query.push(("previous", "true".to_string()));
        }
        if let Some(n) = self.tail_lines {
            query.push(("tailLines", n.to_string()));
        }
        if self.follow {
            query.push(("follow", "true".to_string()));
        }
        query
    }
}

/// A pod bound to this node, as the log endpoint needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundPod {
    pub uid: String,
    /// Its containers' names, init containers included.
    pub containers: Vec<String>,
}

/// The pods bound to this node by namespace and name: written by the agent's loop, read by
/// the log endpoint. Cloning shares the same view.
#[derive(Debug, Clone, Default)]
pub struct PodDirectory(Arc<RwLock<BTreeMap<(String, String), BoundPod>>>);

impl PodDirectory {
    /// Replaces the view with `pods` (pod objects; those without a uid are left out).
    pub fn replace<'a>(&self, pods: impl IntoIterator<Item = &'a Value>) {
        let text = |pod: &Value, pointer: &str| {
            pod.pointer(pointer)
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let bound: BTreeMap<(String, String), BoundPod> = pods
            .into_iter()
            .filter_map(|pod| {
                let uid = text(pod, "/metadata/uid").filter(|u| !u.is_empty())?;
                let ns = text(pod, "/metadata/namespace").unwrap_or_else(|| "default".into());
                let name = text(pod, "/metadata/name")?;
                let containers = ["/spec/containers", "/spec/initContainers"]
                    .iter()
                    .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
                    .flatten()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect();
                Some(((ns, name), BoundPod { uid, containers }))
            })
            .collect();
        let mut view = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *view != bound {
            *view = bound;
        }
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<BoundPod> {
        let view = self.0.read().unwrap_or_else(|p| p.into_inner());
        view.get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Where containers' logs are and whether a container still runs (a follow ends with it).
pub trait ContainerLogs: Send + Sync {
    fn log_path(&self, id: &str) -> PathBuf;
    fn running(&self, id: &str) -> bool;
}

/// The runtime's log files ([`ContainerRuntime::log_path`]) and its view of a container.
pub struct RuntimeLogs(pub Arc<dyn ContainerRuntime>);

impl ContainerLogs for RuntimeLogs {
    fn log_path(&self, id: &str) -> PathBuf {
        self.0.log_path(id)
    }

    fn running(&self, id: &str) -> bool {
        self.0
            .state(id)
            .ok()
            .flatten()
            .is_some_and(|s| s.status != Status::Stopped)
    }
}

/// Where the endpoint reads logs from.
pub enum LogSource {
    /// Files written by the container runtime (`tend agent`).
    Files(Arc<dyn ContainerLogs>),
    /// `tend sim-node`: one line per container, `sim-node NODE pod POD container C`.
    Simulated,
}

/// Everything the endpoint needs.
pub struct LogServer {
    /// The node's name, for messages.
    pub node: String,
    /// The cluster's join token: the key of request signatures.
    pub key: Vec<u8>,
    pub pods: PodDirectory,
    pub source: LogSource,
    /// How often a followed log is polled for new lines.
    pub poll: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LogServerError {
    #[error("cannot listen for log requests on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: io::Error,
    },
    #[error("join token {path}: {reason}")]
    Token { path: String, reason: String },
}

/// Reads the join token (the signing key) from its file.
pub fn read_key(path: &Path) -> Result<Vec<u8>, LogServerError> {
    let err = |reason: String| LogServerError::Token {
        path: path.display().to_string(),
        reason,
    };
    let token = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(token.as_bytes().to_vec())
}

/// Binds the endpoint's socket (port 0: any free port; the listener says which).
pub async fn bind(address: IpAddr, port: u16) -> Result<tokio::net::TcpListener, LogServerError> {
    let address = SocketAddr::new(address, port);
    tokio::net::TcpListener::bind(address)
        .await
        .map_err(|source| LogServerError::Bind { address, source })
}

/// The endpoint's routes.
pub fn router(server: Arc<LogServer>) -> Router {
    Router::new()
        .route(ROUTE, axum::routing::get(container_logs))
        .with_state(server)
}

/// Serves the endpoint until the task is aborted (the agent stops).
pub async fn serve(listener: tokio::net::TcpListener, server: Arc<LogServer>) {
    if let Err(e) = axum::serve(listener, router(server)).await {
        tracing::warn!("log endpoint: {e}");
    }
}

/// Serves the runtime's log files (`tend agent`) on `listener` until the task is aborted.
pub fn spawn_for_runtime(
    listener: tokio::net::TcpListener,
    node: &str,
    key: Vec<u8>,
    pods: PodDirectory,
    runtime: Arc<dyn ContainerRuntime>,
) -> tokio::task::JoinHandle<()> {
    let server = LogServer {
        node: node.to_string(),
        key,
        pods,
        source: LogSource::Files(Arc::new(RuntimeLogs(runtime))),
        poll: Duration::from_millis(250),
    };
    tokio::spawn(serve(listener, Arc::new(server)))
}

async fn container_logs(
    State(server): State<Arc<LogServer>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    req: Parts,
) -> Response {
    respond(&server, &namespace, &pod, &container, &req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn respond(
    server: &LogServer,
    namespace: &str,
    pod: &str,
    container: &str,
    req: &Parts,
) -> Result<Response, ApiError> {
    let uri = &req.uri;
    let path_and_query = uri.path_and_query().map_or(uri.path(), |p| p.as_str());
    let authorization = req
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    sign::verify(
        &server.key,
        req.method.as_str(),
        path_and_query,
        authorization,
        sign::unix_now(),
    )
    .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", e.to_string()))?;
    let options = LogOptions::from_query(uri.query()).map_err(ApiError::bad_request)?;
    let bound = server.pods.get(namespace, pod).ok_or_else(|| {
        ApiError::not_found(format!(
            "pod {namespace}/{pod} is not bound to node {}",
            server.node
        ))
    })?;
    if !bound.containers.iter().any(|c| c == container) {
        return Err(ApiError::not_found(format!(
            "container {container} is not valid for pod {pod}"
        )));
    }
    let no_previous = || {
        ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{pod}\" not found"
        ))
    };
    let body = match &server.source {
        LogSource::Simulated => {
            if options.previous {
                return Err(no_previous());
            }
            let text = format!("sim-node {} pod {pod} container {container}\n", server.node);
            let len = text.len() as u64;
            let start = files::tail_offset(
                &mut Cursor::new(text.as_bytes()),
                len,
                options.tail_lines.unwrap_or(u64::MAX),
            )
            .unwrap_or(0);
            Body::from(text[usize::try_from(start).unwrap_or(0)..].to_string())
        }
        LogSource::Files(logs) => {
            let id = container_id(&bound.uid, container);
            let current = logs.log_path(&id);
            let path = if options.previous {
                files::previous_path(&current)
            } else {
                current
            };
            let tail = options.tail_lines;
            let opened = tokio::task::spawn_blocking({
                let path = path.clone();
                move || open_at_tail(&path, tail)
            })
            .await
            .map_err(|e| ApiError::internal(format!("reading the log: {e}")))?;
            let (file, inode) = match opened {
                Ok(opened) => opened,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(if options.previous {
                        no_previous()
                    } else {
                        ApiError::bad_request(format!(
                            "container \"{container}\" in pod \"{pod}\" is waiting to start: \
                             it has no log yet"
                        ))
                    });
                }
                Err(e) => {
                    return Err(ApiError::internal(format!(
                        "reading {}: {e}",
                        path.display()
                    )));
                }
            };
            Body::from_stream(stream(Reader {
                file: tokio::fs::File::from_std(file),
                inode,
                path,
                id,
                logs: Arc::clone(logs),
                follow: options.follow && !options.previous,
                poll: server.poll,
                idle: 0,
                ending: false,
                done: false,
            }))
        }
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response())
}

/// Opens `path` positioned at its last `tail` lines; returns the file and its inode (to see
/// a rotation while following).
fn open_at_tail(path: &Path, tail: Option<u64>) -> io::Result<(std::fs::File, u64)> {
    let mut file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    let start = match tail {
        Some(lines) => files::tail_offset(&mut file, meta.len(), lines)?,
        None => 0,
    };
    file.seek(SeekFrom::Start(start))?;
    Ok((file, meta.ino()))
}

/// A log being sent: to its end, or (following) until the container stops or its log is
/// rotated away by a restart.
struct Reader {
    file: tokio::fs::File,
    inode: u64,
    path: PathBuf,
    id: String,
    logs: Arc<dyn ContainerLogs>,
    follow: bool,
    poll: Duration,
    /// Polls without new bytes, to ask the runtime only every few polls.
    idle: u32,
    /// The container stopped: send what is left, then end.
    ending: bool,
    done: bool,
}

/// While following, whether the container still runs is asked every this many idle polls.
const CHECK_EVERY: u32 = 4;

impl Reader {
    /// Whether the followed container still runs and still writes to the file being read.
    async fn still_writing(&self) -> bool {
        let logs = Arc::clone(&self.logs);
        let id = self.id.clone();
        let path = self.path.clone();
        let inode = self.inode;
        tokio::task::spawn_blocking(move || {
            let same_file = std::fs::metadata(&path).is_ok_and(|m| m.ino() == inode);
            same_file && logs.running(&id)
        })
        .await
        .unwrap_or(false)
    }
}

fn stream(reader: Reader) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(reader, |mut r| async move {
        if r.done {
            return None;
        }
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match r.file.read(&mut buf).await {
                Ok(0) => {}
                Ok(n) => {
                    buf.truncate(n);
                    return Some((Ok(Bytes::from(buf)), r));
                }
                Err(e) => {
                    r.done = true;
                    return Some((Err(e), r));
                }
            }
            if !r.follow || r.ending {
                return None;
            }
            if r.idle % CHECK_EVERY == 0 && !r.still_writing().await {
                // One more read takes what was written before it stopped.
                r.ending = true;
                continue;
            }
            r.idle = r.idle.wrapping_add(1);
            tokio::time::sleep(r.poll).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_from_and_to_queries() {
        assert_eq!(LogOptions::from_query(None), Ok(LogOptions::default()));
        let o = LogOptions::from_query(Some("previous=true&tailLines=20&follow=1&container=x"))
            .expect("parse");
        assert_eq!(
            o,
            LogOptions {
                previous: true,
                tail_lines: Some(20),
                follow: true
            }
        );
        assert_eq!(
            o.to_query(),
            vec![
                ("previous", "true".to_string()),
                ("tailLines", "20".to_string()),
                ("follow", "true".to_string())
            ]
        );
        assert_eq!(
            LogOptions::from_query(Some("tailLines=-1")).expect("parse"),
            LogOptions::default()
        );
        assert!(
            LogOptions::from_query(Some("tailLines=x"))
                .unwrap_err()
                .contains("tailLines")
        );
        assert!(
            LogOptions::from_query(Some("follow=yes"))
                .unwrap_err()
                .contains("follow")
        );
    }

    #[test]
    fn directory_holds_bound_pods_by_name() {
        let directory = PodDirectory::default();
        let pods = [
            json!({"metadata": {"name": "web-1", "namespace": "shop", "uid": "u1"},
                "spec": {"containers": [{"name": "web"}, {"name": "log"}],
                         "initContainers": [{"name": "setup"}]}}),
            json!({"metadata": {"name": "no-uid"}, "spec": {"containers": [{"name": "c"}]}}),
        ];
        directory.replace(pods.iter());
        assert_eq!(
            directory.get("shop", "web-1"),
            Some(BoundPod {
                uid: "u1".into(),
                containers: vec!["web".into(), "log".into(), "setup".into()]
            })
        );
        assert_eq!(directory.get("default", "web-1"), None);
        assert_eq!(directory.get("default", "no-uid"), None);
        directory.replace([]);
        assert_eq!(directory.get("shop", "web-1"), None);
    }
}
