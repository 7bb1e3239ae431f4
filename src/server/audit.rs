//! The audit log: one JSON line per mutation (who, what, when, and how it ended), appended to
//! `audit.log` (mode 0600) under the state directory or to `--audit-log FILE`. Reads are not
//! logged (the agents' watches and heartbeats' GETs would drown the writes); status writes
//! are, since they are what nodes change.

use super::auth;
use super::path::{self, Route};
use super::tokens::{Identity, Tokens};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::Response;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const AUDIT_LOG_FILE: &str = "audit.log";

/// One audited mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// RFC 3339, UTC.
    pub time: String,
    /// `admin`, `join`, `node NAME`, `webhook`, `source`, or `anonymous` (refused).
    pub identity: String,
    /// `create`, `update`, `delete`, `patch`, `register`, `apply` (a source revision).
    pub verb: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// The request path (or the revision applied).
    pub path: String,
    /// The HTTP status answered (200 for an applied revision).
    pub code: u16,
}

/// Where audit entries go.
pub trait AuditSink: Send + Sync {
    fn record(&self, entry: &AuditEntry);
}

/// When the audit log is rotated: at `max_bytes` (0: never), keeping `backups` old files
/// (`audit.log.1` the newest), as kube-apiserver's `--audit-log-maxsize` and
/// `--audit-log-maxbackup` do. Why: every status write is audited, and 100 nodes writing
/// their pods' status every second made a 277 MB log in 50 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub max_bytes: u64,
    pub backups: u32,
}

impl Rotation {
    /// Never rotated (tests, and `--audit-log-maxsize 0`).
    pub const NEVER: Rotation = Rotation {
        max_bytes: 0,
        backups: 0,
    };

    /// Whether a file of `size` bytes is rotated before a line of `line` bytes is added
    /// (never an empty file: a line longer than the limit still gets written). Pure.
    pub fn due(&self, size: u64, line: usize) -> bool {
        self.max_bytes > 0 && size > 0 && size.saturating_add(line as u64) > self.max_bytes
    }
}

/// The old file names of `path`, the newest first: `path.1` .. `path.N`.
fn backup(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Appends entries to a file, one JSON line each, written whole under a lock so that lines
/// never interleave, rotated by size ([`Rotation`]).
pub struct FileAudit {
    path: PathBuf,
    rotation: Rotation,
    file: Mutex<Open>,
}

/// The file being written and its size.
struct Open {
    file: File,
    size: u64,
}

/// Opens (creating, mode 0600) `path` for appending; an existing file is made 0600 too.
fn open_private(path: &Path) -> io::Result<Open> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("audit log {}: {e}", path.display())))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    let size = file.metadata()?.len();
    Ok(Open { file, size })
}

impl FileAudit {
    /// Opens (creating, mode 0600) `path` for appending, rotated as `rotation` says.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<FileAudit> {
        Ok(FileAudit {
            path: path.to_path_buf(),
            rotation,
            file: Mutex::new(open_private(path)?),
        })
    }

    /// Moves the file to `path.1` (and `path.1` to `path.2`, ...; the oldest beyond
    /// `backups` is removed) and opens a new one. On failure the current file is kept, so
    /// that no entry is lost for a rename that failed.
    fn rotate(&self, open: &mut Open) -> io::Result<()> {
        let backups = self.rotation.backups;
        if backups == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            match std::fs::remove_file(backup(&self.path, backups)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            for n in (1..backups).rev() {
                match std::fs::rename(backup(&self.path, n), backup(&self.path, n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.path, backup(&self.path, 1))?;
        }
        *open = open_private(&self.path)?;
        Ok(())
    }
}

impl AuditSink for FileAudit {
    fn record(&self, entry: &AuditEntry) {
        let Ok(mut line) = serde_json::to_vec(entry) else {
            return;
        };
        line.push(b'\n');
        let mut open = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if self.rotation.due(open.size, line.len())
            && let Err(e) = self.rotate(&mut open)
        {
            tracing::error!(path = %self.path.display(), "rotating the audit log: {e}");
        }
        match open.file.write_all(&line) {
            Ok(()) => open.size += line.len() as u64,
            Err(e) => {
                tracing::error!(path = %self.path.display(), "writing the audit log: {e}")
            }
        }
    }
}

/// Keeps entries in memory (tests).
#[derive(Default)]
pub struct RecordingAudit {
    pub entries: Mutex<Vec<AuditEntry>>,
}

impl AuditSink for RecordingAudit {
    fn record(&self, entry: &AuditEntry) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(entry.clone());
    }
}

/// Set on a response by a handler that knows the object's name when the path does not say
/// it (a node registration names the node in its body).
#[derive(Debug, Clone)]
pub struct AuditName(pub String);

/// The entry for a request, or `None` for a read. Pure.
pub fn entry_for(
    identity: Option<&Identity>,
    method: &Method,
    path: &str,
    code: u16,
    time: String,
) -> Option<AuditEntry> {
    let verb = match *method {
        Method::POST => "create",
        Method::PUT => "update",
        Method::DELETE => "delete",
        Method::PATCH => "patch",
        _ => return None,
    };
    let route = path::parse(path);
    let who = match (&route, identity) {
        (Some(Route::GitHook), _) => "webhook".to_string(),
        (_, Some(identity)) => identity.to_string(),
        (_, None) => "anonymous".to_string(),
    };
    let mut entry = AuditEntry {
        time,
        identity: who,
        verb: verb.to_string(),
        kind: None,
        namespace: None,
        name: None,
        subresource: None,
        path: path.to_string(),
        code,
    };
    match route {
        Some(Route::Collection { kind, namespace }) => {
            entry.kind = Some(kind.to_string());
            entry.namespace = namespace;
        }
        Some(Route::Object(key)) | Some(Route::Status(key)) => {
            if path.ends_with("/status") {
                entry.subresource = Some("status".into());
            }
            entry.kind = Some(key.kind.to_string());
            entry.namespace = Some(key.namespace).filter(|ns| !ns.is_empty());
            entry.name = Some(key.name);
        }
        Some(Route::Register) => {
            entry.verb = "register".into();
            entry.kind = Some("Node".into());
        }
        _ => {}
    }
    Some(entry)
}

/// The entry for a source revision the source controller applied.
pub fn applied_revision(revision: &str, time: String) -> AuditEntry {
    AuditEntry {
        time,
        identity: "source".into(),
        verb: "apply".into(),
        kind: Some("Revision".into()),
        namespace: None,
        name: Some(revision.to_string()),
        subresource: None,
        path: format!("revision {revision}"),
        code: 200,
    }
}

/// Now, RFC 3339 in UTC with milliseconds.
pub fn now() -> String {
    let now = jiff::Timestamp::now();
    now.round(jiff::Unit::Millisecond)
        .unwrap_or(now)
        .to_string()
}

struct Audit {
    tokens: Tokens,
    sink: Arc<dyn AuditSink>,
}

/// Wraps a router so that every mutation it answers is recorded in `sink`.
pub fn layer(router: Router, tokens: Tokens, sink: Arc<dyn AuditSink>) -> Router {
    router.layer(middleware::from_fn_with_state(
        Arc::new(Audit { tokens, sink }),
        audit,
    ))
}

async fn audit(State(audit): State<Arc<Audit>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let identity = auth::authenticate(&audit.tokens, req.headers());
    let response = next.run(req).await;
    let code = response.status().as_u16();
    if let Some(mut entry) = entry_for(identity.as_ref(), &method, &path, code, now()) {
        if let Some(AuditName(name)) = response.extensions().get::<AuditName>() {
            entry.name = Some(name.clone());
        }
        audit.sink.record(&entry);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn mutations_are_entries_reads_are_not() {
        let admin = Identity::Admin;
        assert_eq!(
            entry_for(Some(&admin), &Method::GET, "/api/v1/pods", 200, T.into()),
            None
        );
        let e = entry_for(
            Some(&Identity::Node("n1".into())),
            &Method::PUT,
            "/api/v1/namespaces/default/pods/web-1/status",
            403,
            T.into(),
        )
        .expect("entry");
        assert_eq!(e.identity, "node n1");
        assert_eq!(e.verb, "update");
        assert_eq!(e.kind.as_deref(), Some("Pod"));
        assert_eq!(e.namespace.as_deref(), Some("default"));
        assert_eq!(e.name.as_deref(), Some("web-1"));
        assert_eq!(e.subresource.as_deref(), Some("status"));
        assert_eq!(e.code, 403);
        let e = entry_for(None, &Method::DELETE, "/api/v1/nodes/n2", 401, T.into()).expect("e");
        assert_eq!(e.identity, "anonymous");
        assert_eq!(e.namespace, None);
        assert_eq!(e.name.as_deref(), Some("n2"));
        let e = entry_for(None, &Method::POST, "/api/v1/hooks/git", 202, T.into()).expect("e");
        assert_eq!(e.identity, "webhook");
        let e = entry_for(
            Some(&Identity::Join),
            &Method::POST,
            path::REGISTER_PATH,
            201,
            T.into(),
        )
        .expect("e");
        assert_eq!((e.verb.as_str(), e.identity.as_str()), ("register", "join"));
    }

    #[test]
    fn the_file_is_private_and_gets_whole_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_LOG_FILE);
        let sink = FileAudit::open(&path, Rotation::NEVER).expect("open");
        sink.record(&applied_revision("abc123", T.into()));
        sink.record(&applied_revision("def456", T.into()));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["name"], "def456");
        assert_eq!(lines[0]["identity"], "source");
        assert_eq!(lines[0]["time"], T);
    }

    #[test]
    fn rotation_is_due_past_the_limit_and_never_for_an_empty_file() {
        let r = Rotation {
            max_bytes: 100,
            backups: 2,
        };
        assert!(!r.due(0, 500), "an empty file takes even an oversized line");
        assert!(!r.due(60, 40), "exactly at the limit");
        assert!(r.due(60, 41));
        assert!(!Rotation::NEVER.due(u64::MAX, 1));
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_its_backups_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_LOG_FILE);
        let line = serde_json::to_vec(&applied_revision("r000", T.into()))
            .expect("json")
            .len() as u64
            + 1;
        // Three lines a file, two backups: 10 entries leave 1 + 3 + 3 of the last 7.
        let rotation = Rotation {
            max_bytes: 3 * line,
            backups: 2,
        };
        let sink = FileAudit::open(&path, rotation).expect("open");
        for i in 0..10 {
            sink.record(&applied_revision(&format!("r{i:03}"), T.into()));
        }
        let names = |p: &Path| -> Vec<String> {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                    v["name"].as_str().unwrap_or_default().to_string()
                })
                .collect()
        };
        assert_eq!(names(&path), ["r009"]);
        assert_eq!(names(&backup(&path, 1)), ["r006", "r007", "r008"]);
        assert_eq!(names(&backup(&path, 2)), ["r003", "r004", "r005"]);
        assert!(!backup(&path, 3).exists(), "no more than 2 backups");
        for p in [path.clone(), backup(&path, 1), backup(&path, 2)] {
            let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", p.display());
        }
        // Reopened, the size already written counts.
        drop(sink);
        let sink = FileAudit::open(&path, rotation).expect("reopen");
        sink.record(&applied_revision("r010", T.into()));
        sink.record(&applied_revision("r011", T.into()));
        sink.record(&applied_revision("r012", T.into()));
        assert_eq!(names(&path), ["r012"]);
        assert_eq!(names(&backup(&path, 1)), ["r009", "r010", "r011"]);
        assert_eq!(names(&backup(&path, 2)), ["r006", "r007", "r008"]);
    }

    #[test]
    fn without_backups_the_log_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(AUDIT_LOG_FILE);
        let rotation = Rotation {
            max_bytes: 1,
            backups: 0,
        };
        let sink = FileAudit::open(&path, rotation).expect("open");
        sink.record(&applied_revision("a", T.into()));
        sink.record(&applied_revision("b", T.into()));
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.lines().count(), 1);
        assert!(text.contains("\"b\""));
        assert!(!backup(&path, 1).exists());
    }
}
