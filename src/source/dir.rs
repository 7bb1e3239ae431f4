//! Directory sources: the YAML files under a directory, scanned on refresh and watched with
//! notify; a change counts once the files settle. A revision id is a hash of the content.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::watch::{Signal, WatchGuard, poke};
use super::{FileState, Files, RevisionInfo, Source, SourceError};

/// A change is reported once no file event has arrived for this long.
const SETTLE: Duration = Duration::from_millis(100);
/// ...or after this long, when a writer never stops, so that changes are not held back forever.
const MAX_SETTLE: Duration = Duration::from_secs(2);

/// One scan of the directory: its content hash and files.
struct Scan {
    id: String,
    files: BTreeMap<String, FileState>,
}

pub struct DirSource {
    /// As given, for messages.
    location: PathBuf,
    /// Canonical path: symlink targets must stay under it.
    root: PathBuf,
    max_file_bytes: usize,
    /// The newest scan, and the one before it (the base that deltas are computed against).
    current: Option<Scan>,
    previous: Option<Scan>,
}

impl DirSource {
    pub fn open(path: &Path, max_file_bytes: usize) -> Result<DirSource, SourceError> {
        let err = |reason: String| SourceError::Dir {
            location: path.display().to_string(),
            reason,
        };
        let root = path.canonicalize().map_err(|e| err(e.to_string()))?;
        if !root.is_dir() {
            return Err(err("not a directory".to_string()));
        }
        Ok(DirSource {
            location: path.to_path_buf(),
            root,
            max_file_bytes,
            current: None,
            previous: None,
        })
    }

    fn err(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Dir {
            location: self.location.display().to_string(),
            reason: reason.to_string(),
        }
    }

    fn scan(&self) -> Result<Scan, SourceError> {
        let mut files = BTreeMap::new();
        self.scan_dir(&self.root, "", true, &mut files)?;
        let id = content_id(&files);
        Ok(Scan { id, files })
    }

    /// Reads the YAML files under `dir` (whose path relative to the root is `prefix`) into
    /// `files`. An unreadable directory fails the scan: skipping it would prune its objects.
    fn scan_dir(
        &self,
        dir: &Path,
        prefix: &str,
        utf8: bool,
        files: &mut BTreeMap<String, FileState>,
    ) -> Result<(), SourceError> {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| self.err(format!("reading {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| self.err(format!("reading {}: {e}", dir.display())))?;
            let name = entry.file_name();
            let (name_str, name_utf8) = match name.to_str() {
                Some(s) => (s.to_string(), true),
                None => (name.to_string_lossy().into_owned(), false),
            };
            if name_str.starts_with('.') {
                continue;
            }
            let rel = format!("{prefix}{name_str}");
            let path = entry.path();
            let kind = match entry.file_type() {
                Ok(kind) => kind,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err(format!("{}: {e}", path.display()))),
            };
            if kind.is_dir() {
                self.scan_dir(&path, &format!("{rel}/"), utf8 && name_utf8, files)?;
                continue;
            }
            // Symlinked directories are not followed: they could loop or duplicate files.
            if !is_yaml_name(&name_str) {
                continue;
            }
            let state = if !(utf8 && name_utf8) {
                FileState::Refused("file name is not valid UTF-8".to_string())
            } else if kind.is_symlink() {
                match self.symlink_target(&path) {
                    Ok(Some(target)) => self.read_file(&target),
                    Ok(None) => continue,
                    Err(reason) => FileState::Refused(reason),
                }
            } else {
                self.read_file(&path)
            };
            files.insert(rel, state);
        }
        Ok(())
    }

    /// The canonical target of a symlink when it is a file inside the directory; `None` when it
    /// points at a directory (not followed).
    fn symlink_target(&self, link: &Path) -> Result<Option<PathBuf>, String> {
        let shown = std::fs::read_link(link)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        let target = link
            .canonicalize()
            .map_err(|e| format!("symlink to {shown}: {e}"))?;
        if !target.starts_with(&self.root) {
            return Err(format!("symlink to {shown} leaves the directory"));
        }
        if target.is_dir() {
            return Ok(None);
        }
        Ok(Some(target))
    }

    fn read_file(&self, path: &Path) -> FileState {
        let read = || -> std::io::Result<FileState> {
            // Non-blocking, then checked: opening a FIFO named `x.yaml` would otherwise wait
            // for a writer forever, and reading a device would never end.
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)?;
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Ok(FileState::Refused(
                    "not a regular file (a FIFO, socket or device?)".to_string(),
                ));
            }
            let size = meta.len();
            if size > self.max_file_bytes as u64 {
                return Ok(FileState::Refused(format!(
                    "file is {size} bytes, over the limit of {} bytes",
                    self.max_file_bytes
                )));
            }
            // The file may grow while it is read: never take more than the limit.
            let mut content = Vec::with_capacity(size as usize);
            file.take(self.max_file_bytes as u64 + 1)
                .read_to_end(&mut content)?;
            if content.len() > self.max_file_bytes {
                return Ok(FileState::Refused(format!(
                    "file is over the limit of {} bytes",
                    self.max_file_bytes
                )));
            }
            Ok(FileState::Present(content))
        };
        read().unwrap_or_else(|e| FileState::Refused(format!("cannot read: {e}")))
    }

    fn scan_by_id(&self, id: &str) -> Option<&Scan> {
        [self.current.as_ref(), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.id == id)
    }
}

impl Source for DirSource {
    fn describe(&self) -> String {
        format!("dir {}", self.location.display())
    }

    fn refresh(&mut self) -> Result<Option<String>, SourceError> {
        let scan = self.scan()?;
        let id = scan.id.clone();
        if self.current.as_ref().is_none_or(|c| c.id != id) {
            self.previous = self.current.replace(scan);
        }
        Ok(Some(id))
    }

    fn revisions(
        &mut self,
        since: Option<&str>,
        head: &str,
    ) -> Result<Vec<RevisionInfo>, SourceError> {
        if since == Some(head) {
            return Ok(Vec::new());
        }
        let scan = self
            .scan_by_id(head)
            .ok_or_else(|| self.err(format!("unknown revision {head}")))?;
        let message = match since {
            None => "initial state".to_string(),
            Some(base) => {
                let changed = match self.scan_by_id(base) {
                    Some(base) => delta(&base.files, &scan.files).len(),
                    None => scan.files.len(),
                };
                format!("directory change: {changed} files changed")
            }
        };
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        Ok(vec![RevisionInfo {
            id: head.to_string(),
            parent: since.map(str::to_string),
            message,
            author: "tend <tend@localhost>".to_string(),
            time,
        }])
    }

    fn files(&mut self, id: &str, base: Option<&str>) -> Result<Files, SourceError> {
        let scan = self
            .scan_by_id(id)
            .ok_or_else(|| self.err(format!("unknown revision {id}")))?;
        match base.and_then(|b| self.scan_by_id(b)) {
            Some(base) => Ok(Files {
                complete: false,
                files: delta(&base.files, &scan.files),
            }),
            None => Ok(Files {
                complete: true,
                files: scan.files.clone(),
            }),
        }
    }

    fn watch(&self, notify: tokio::sync::mpsc::Sender<()>) -> Result<Box<dyn Send>, SourceError> {
        let (signals, received) = mpsc::channel();
        let events = signals.clone();
        let root = self.root.clone();
        let location = self.location.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    Ok(event) => {
                        !matches!(event.kind, EventKind::Access(_))
                            && event
                                .paths
                                .iter()
                                .any(|p| !is_hidden(p.strip_prefix(&root).unwrap_or(p)))
                    }
                    // An overflowed queue may hide a change: better one scan too many.
                    Err(_) => true,
                };
                if relevant {
                    let _ = events.send(Signal::Event);
                }
            })
            .map_err(|e| self.err(format!("watching: {e}")))?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|e| self.err(format!("watching: {e}")))?;
        let thread = std::thread::Builder::new()
            .name("tend-dir-debounce".to_string())
            .spawn(move || debounce(&received, &notify))
            .map_err(|e| self.err(format!("starting the watch thread: {e}")))?;
        tracing::debug!(dir = %location.display(), "watching");
        Ok(Box::new(WatchGuard {
            watcher: Some(watcher),
            threads: vec![(signals, thread)],
        }))
    }
}

/// Waits for a first event, then for the events to stop for `SETTLE`, and notifies once.
fn debounce(received: &mpsc::Receiver<Signal>, notify: &tokio::sync::mpsc::Sender<()>) {
    loop {
        match received.recv() {
            Ok(Signal::Event) => {}
            Ok(Signal::Stop) | Err(_) => return,
        }
        let first = Instant::now();
        loop {
            match received.recv_timeout(SETTLE) {
                Ok(Signal::Event) if first.elapsed() < MAX_SETTLE => {}
                Ok(Signal::Event) | Err(mpsc::RecvTimeoutError::Timeout) => break,
                Ok(Signal::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        if notify.is_closed() {
            return;
        }
        poke(notify);
    }
}

/// The files that differ between two scans; `Removed` for those gone.
fn delta(
    base: &BTreeMap<String, FileState>,
    now: &BTreeMap<String, FileState>,
) -> BTreeMap<String, FileState> {
    let mut changed: BTreeMap<String, FileState> = now
        .iter()
        .filter(|(path, state)| base.get(*path) != Some(*state))
        .map(|(p, s)| (p.clone(), s.clone()))
        .collect();
    for path in base.keys().filter(|p| !now.contains_key(*p)) {
        changed.insert(path.clone(), FileState::Removed);
    }
    changed
}

/// `sha256:<hex>` over the sorted paths and contents (refusal reasons count as content, so a
/// file that becomes refused is a change too).
fn content_id(files: &BTreeMap<String, FileState>) -> String {
    let mut hash = Sha256::new();
    for (path, state) in files {
        let (tag, body): (u8, &[u8]) = match state {
            FileState::Present(content) => (b'P', content),
            FileState::Refused(reason) => (b'R', reason.as_bytes()),
            FileState::Removed => (b'X', b""),
        };
        hash.update((path.len() as u64).to_le_bytes());
        hash.update(path.as_bytes());
        hash.update([tag]);
        hash.update((body.len() as u64).to_le_bytes());
        hash.update(body);
    }
    format!("sha256:{}", hex::encode(hash.finalize()))
}

fn is_yaml_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(".yaml") || lower.ends_with(".yml")
}

fn is_hidden(rel: &Path) -> bool {
    rel.components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> BTreeMap<String, FileState> {
        list.iter()
            .map(|(p, c)| (p.to_string(), FileState::Present(c.as_bytes().to_vec())))
            .collect()
    }

    #[test]
    fn content_id_depends_on_paths_and_content_only() {
        let a = files(&[("a.yaml", "x"), ("b.yaml", "y")]);
        assert_eq!(content_id(&a), content_id(&a.clone()));
        assert_ne!(
            content_id(&a),
            content_id(&files(&[("a.yaml", "xb.yaml"), ("", "y")]))
        );
        assert_ne!(
            content_id(&a),
            content_id(&files(&[("a.yaml", "x"), ("c.yaml", "y")]))
        );
        assert!(content_id(&a).starts_with("sha256:"));
    }

    #[test]
    fn delta_reports_changes_and_removals() {
        let base = files(&[("a.yaml", "1"), ("b.yaml", "2"), ("c.yaml", "3")]);
        let now = files(&[("a.yaml", "1"), ("b.yaml", "22"), ("d.yaml", "4")]);
        let d = delta(&base, &now);
        assert_eq!(d.len(), 3);
        assert_eq!(d["b.yaml"], FileState::Present(b"22".to_vec()));
        assert_eq!(d["c.yaml"], FileState::Removed);
        assert_eq!(d["d.yaml"], FileState::Present(b"4".to_vec()));
    }
}
