//! Sources of desired state: a git repository (local, bare or not, or a remote URL cloned under
//! the state directory) or a plain directory. A source turns its newest state into revisions
//! (commit id or content hash, message, author, time) and the YAML files of each revision.
//! Fetching a source is separate from applying it (that is the controller's job).

pub mod dir;
pub mod git;
mod watch;
pub mod webhook;
pub mod write;

use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("git repository {location}: {reason}")]
    Git { location: String, reason: String },
    #[error("directory {location}: {reason}")]
    Dir { location: String, reason: String },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// One revision of the source: a git commit, or a settled directory state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionInfo {
    /// Full commit id, or `sha256:<hex>` content hash for directories.
    pub id: String,
    /// First parent commit, if any.
    pub parent: Option<String>,
    /// Full commit message.
    pub message: String,
    /// `Name <email>`.
    pub author: String,
    /// Commit time, seconds since the Unix epoch.
    pub time: i64,
}

impl RevisionInfo {
    /// The first line of the message.
    pub fn subject(&self) -> &str {
        self.message.lines().next().unwrap_or("")
    }
    /// The 7-character short id (git's default abbreviation).
    pub fn short_id(&self) -> &str {
        let id = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &id[..id.len().min(7)]
    }
}

/// A file's content at a revision: YAML files only (`.yaml`, `.yml`), paths relative to the
/// source root (after `--path`), with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Present(Vec<u8>),
    /// Refused before parsing: a symlink leaving the repository, a file over the size limit...
    /// The manifest stage reports the reason as an error of that file.
    Refused(String),
    Removed,
}

/// The YAML files of a revision: either every file (`complete`), or only those that changed
/// since a base revision (`Removed` for deleted ones).
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub complete: bool,
    pub files: BTreeMap<String, FileState>,
}

/// A source of revisions. Implementations are blocking; run them off the async runtime.
pub trait Source: Send {
    /// Where this source is, for messages (`git /srv/repo (main)`, `dir ./manifests`).
    fn describe(&self) -> String;
    /// Brings the source up to date (fetch for remotes, scan for directories) and returns the
    /// newest revision id, or `None` when there is nothing yet (an empty repository or branch).
    fn refresh(&mut self) -> Result<Option<String>, SourceError>;
    /// The revisions after `since` (exclusive) up to `head` (inclusive), oldest first, following
    /// first parents. With `since` = `None`, or when `since` is not an ancestor of `head`
    /// (force push), only `head`.
    fn revisions(
        &mut self,
        since: Option<&str>,
        head: &str,
    ) -> Result<Vec<RevisionInfo>, SourceError>;
    /// The YAML files at revision `id`: all of them when `base` is `None`, else only those that
    /// differ from revision `base` (a git tree diff, so cost follows the change).
    fn files(&mut self, id: &str, base: Option<&str>) -> Result<Files, SourceError>;
    /// Starts watching for changes; each change sends `()` on `notify` (duplicates are fine:
    /// the receiver coalesces). The watch lives as long as the returned guard.
    fn watch(&self, notify: tokio::sync::mpsc::Sender<()>) -> Result<Box<dyn Send>, SourceError>;
}
