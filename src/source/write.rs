//! Writing to the source: CLI mutations (`scale`, `rollout undo|pause|resume`) and auto-revert
//! are commits on the watched branch (pushed for remotes) or rewrites of a directory's file,
//! never hidden overrides. The watcher then applies them like any other change.

use super::dir::DirSource;
use super::{Source, SourceError, git};
use crate::api::ObjectKey;
use crate::manifest::Limits;
use crate::manifest::edit::apply_edit;
use git2::{Oid, Repository};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A change to one object's manifest, made in place so that the rest of the file (comments,
/// order, other documents) stays as it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// `spec.replicas`.
    SetReplicas(i32),
    /// `spec.paused` (`false` removes the field or sets it false).
    SetPaused(bool),
    /// `spec.template`: the pod template of an earlier revision (rollback, auto-revert).
    SetTemplate(Value),
}

/// What a write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new commit id (git), or the new content hash (directory).
    pub revision: String,
}

/// Edits the source file holding an object and records the change.
pub trait SourceWriter: Send + Sync {
    /// Applies `edit` to the document of `key` in `file` (relative to the source root, as in
    /// the `tend.dev/source-file` annotation) and commits with `message` (git) or rewrites the
    /// file (directory). Fails clearly, changing nothing, when the work tree is dirty, the
    /// object is not in the file, or a remote refuses the push.
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Written, SourceError>;
}

/// Why a write failed, for callers that answer differently (the API's status codes). Read
/// from the message, which stays the one place the reason is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFailure {
    /// The work tree is dirty, or the branch moved twice while committing: retry later.
    Conflict,
    /// The file or the object in it is not there.
    NotFound,
    /// The manifest cannot be edited in place safely.
    Unsupported,
    /// The source cannot be written at all (push refused, permissions...).
    Unwritable,
}

const DIRTY: &str = "has uncommitted changes; commit or stash them first";
const MOVED: &str = "moved while committing";
const MISSING: &str = "not found";
const CANNOT_EDIT: &str = "cannot edit";

impl WriteFailure {
    pub fn of(error: &SourceError) -> WriteFailure {
        let text = error.to_string();
        if text.contains(DIRTY) || text.contains(MOVED) {
            WriteFailure::Conflict
        } else if text.contains("is not in this file") || text.contains(MISSING) {
            WriteFailure::NotFound
        } else if text.contains(CANNOT_EDIT) || text.contains("would not give the intended") {
            WriteFailure::Unsupported
        } else {
            WriteFailure::Unwritable
        }
    }
}

/// `Name <email>` of tend's own commits when git config names nobody.
const AUTHOR_NAME: &str = "tend";
const AUTHOR_EMAIL: &str = "tend@localhost";

/// Writes to a git source: commits on the watched branch of a local repository (bare or with
/// a work tree), or of the clone of a remote which is then pushed.
///
/// With a work tree whose HEAD is the watched branch, the tracked files must be clean (the
/// user's edits are never mixed into tend's commit nor overwritten); the edited file is then
/// checked out so the user sees the change. Untracked files do not count as dirty. When HEAD is
/// another branch, only the branch ref moves.
pub struct GitWriter {
    location: String,
    /// A path for local repositories; the clone directory for remotes.
    git_dir: PathBuf,
    remote_url: Option<String>,
    branch: Option<String>,
    subdir: Option<String>,
    /// One edit at a time: the ref compare-and-swap protects against others, this against us.
    busy: Mutex<()>,
}

impl GitWriter {
    /// Same arguments as [`GitSource::open`](super::git::GitSource::open): the writer works on
    /// the repository (or remote clone) the source reads.
    pub fn open(
        location: &str,
        branch: Option<&str>,
        path: Option<&str>,
        state_dir: &Path,
    ) -> Result<GitWriter, SourceError> {
        let shown = git::redact(location);
        let subdir = match path {
            Some(p) => git::normalise_subdir(p).map_err(|reason| SourceError::Git {
                location: shown.clone(),
                reason,
            })?,
            None => None,
        };
        let (git_dir, remote_url) = if git::is_url(location) {
            (
                git::clone_dir(state_dir, location),
                Some(location.to_string()),
            )
        } else {
            (PathBuf::from(location), None)
        };
        Ok(GitWriter {
            location: shown,
            git_dir,
            remote_url,
            branch: branch.map(str::to_string),
            subdir,
            busy: Mutex::new(()),
        })
    }

    fn err(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Git {
            location: self.location.clone(),
            reason: reason.to_string(),
        }
    }

    fn open_repo(&self) -> Result<Repository, SourceError> {
        match self.remote_url {
            Some(_) => Repository::open_bare(&self.git_dir),
            None => Repository::open(&self.git_dir),
        }
        .map_err(|e| self.err(e.message()))
    }

    fn branch(&self, repo: &Repository) -> Result<String, SourceError> {
        if let Some(b) = &self.branch {
            return Ok(b.clone());
        }
        if self.remote_url.is_none() {
            return Ok(git::local_default_branch(repo));
        }
        // A remote's branch is learnt by the source's first fetch; the clone records it.
        let refs = repo
            .references_glob("refs/remotes/origin/*")
            .map_err(|e| self.err(e.message()))?;
        let names: Vec<String> = refs
            .flatten()
            .filter_map(|r| r.name().ok().map(str::to_string))
            .collect();
        match names.as_slice() {
            [one] => Ok(one.trim_start_matches("refs/remotes/origin/").to_string()),
            _ => Err(self.err(
                "the branch of the remote is not known yet (give --branch, or wait for the first fetch)",
            )),
        }
    }

    fn file_path(&self, file: &str) -> Result<String, SourceError> {
        if file.starts_with('/') || file.split('/').any(|p| p == "..") {
            return Err(self.err(format!("{file:?} is not a path inside the repository")));
        }
        Ok(match &self.subdir {
            Some(sub) => format!("{sub}/{file}"),
            None => file.to_string(),
        })
    }

    /// Refuses when HEAD is the watched branch and tracked files differ from it.
    fn check_clean(&self, repo: &Repository, branch: &str) -> Result<bool, SourceError> {
        if repo.is_bare() || self.remote_url.is_some() {
            return Ok(false);
        }
        let on_branch = repo
            .find_reference("HEAD")
            .ok()
            .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_string))
            .is_some_and(|t| t == format!("refs/heads/{branch}"));
        if !on_branch {
            return Ok(false);
        }
        let mut options = git2::StatusOptions::new();
        options
            .include_untracked(false)
            .include_ignored(false)
            .exclude_submodules(true);
        let statuses = repo
            .statuses(Some(&mut options))
            .map_err(|e| self.err(e.message()))?;
        let dirty = statuses
            .iter()
            .any(|s| s.status() != git2::Status::CURRENT && !s.status().is_ignored());
        if dirty {
            let shown = repo
                .workdir()
                .map(|w| w.display().to_string())
                .unwrap_or_else(|| self.location.clone());
            return Err(SourceError::Git {
                location: self.location.clone(),
                reason: format!("work tree of {shown} {DIRTY}"),
            });
        }
        Ok(true)
    }

    fn fetch(&self, repo: &Repository, url: &str, branch: &str) -> Result<(), SourceError> {
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|e| self.err(e.message()))?;
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(git::callbacks())
            .download_tags(git2::AutotagOption::None)
            .update_fetchhead(false);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| self.err(format!("fetching before the commit: {}", e.message())))
    }

    fn push(&self, repo: &Repository, url: &str, commit: Oid, branch: &str) -> Result<(), String> {
        const OUTGOING: &str = "refs/tend/outgoing";
        repo.reference(OUTGOING, commit, true, "tend: commit to push")
            .map_err(|e| e.message().to_string())?;
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|e| e.message().to_string())?;
        let refused = std::cell::RefCell::new(None::<String>);
        let result = {
            let mut callbacks = git::callbacks();
            callbacks.push_update_reference(|_, status| {
                if let Some(status) = status {
                    *refused.borrow_mut() = Some(status.to_string());
                }
                Ok(())
            });
            let mut options = git2::PushOptions::new();
            options.remote_callbacks(callbacks);
            remote.push(
                &[format!("{OUTGOING}:refs/heads/{branch}")],
                Some(&mut options),
            )
        };
        if let Ok(mut r) = repo.find_reference(OUTGOING) {
            let _ = r.delete();
        }
        result.map_err(|e| e.message().to_string())?;
        match refused.into_inner() {
            Some(reason) => Err(format!("the remote refused the update: {reason}")),
            None => Ok(()),
        }
    }

    /// One attempt; `Ok(None)` when the branch moved under us.
    fn attempt(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Option<Written>, SourceError> {
        let repo = self.open_repo()?;
        let branch = self.branch(&repo)?;
        if let Some(url) = &self.remote_url {
            self.fetch(&repo, url, &branch)?;
        }
        let ref_name = match self.remote_url {
            Some(_) => format!("refs/remotes/origin/{branch}"),
            None => format!("refs/heads/{branch}"),
        };
        let checkout = self.check_clean(&repo, &branch)?;
        let head = repo
            .find_reference(&ref_name)
            .and_then(|r| r.peel_to_commit())
            .map_err(|e| self.err(format!("branch {branch}: {}", e.message())))?;
        let tree = head.tree().map_err(|e| self.err(e.message()))?;
        let path = self.file_path(file)?;
        let entry = tree
            .get_path(Path::new(&path))
            .map_err(|_| self.err(format!("{path} {MISSING} on branch {branch}")))?;
        let mode = entry.filemode();
        if mode != i32::from(git2::FileMode::Blob)
            && mode != i32::from(git2::FileMode::BlobExecutable)
        {
            return Err(self.err(format!("{path} is not a regular file ({CANNOT_EDIT} it)")));
        }
        let blob = repo
            .find_blob(entry.id())
            .map_err(|e| self.err(e.message()))?;
        let text = std::str::from_utf8(blob.content())
            .map_err(|_| self.err(format!("{path} is not UTF-8")))?;
        let edited = apply_edit(text, key, edit).map_err(|e| SourceError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if edited == text {
            return Ok(Some(Written {
                revision: head.id().to_string(),
            }));
        }
        let new_blob = repo
            .blob(edited.as_bytes())
            .map_err(|e| self.err(e.message()))?;
        let file_mode = if mode == i32::from(git2::FileMode::BlobExecutable) {
            git2::FileMode::BlobExecutable
        } else {
            git2::FileMode::Blob
        };
        let new_tree = git2::build::TreeUpdateBuilder::new()
            .upsert(path.as_str(), new_blob, file_mode)
            .create_updated(&repo, &tree)
            .map_err(|e| self.err(e.message()))?;
        let new_tree = repo
            .find_tree(new_tree)
            .map_err(|e| self.err(e.message()))?;
        let signature = repo
            .signature()
            .or_else(|_| git2::Signature::now(AUTHOR_NAME, AUTHOR_EMAIL))
            .map_err(|e| self.err(e.message()))?;
        let commit = repo
            .commit(None, &signature, &signature, message, &new_tree, &[&head])
            .map_err(|e| self.err(e.message()))?;
        if let Some(url) = &self.remote_url {
            if let Err(reason) = self.push(&repo, url, commit, &branch) {
                if reason.contains("non-fast-forward") || reason.contains("fetch first") {
                    return Ok(None);
                }
                return Err(self.err(format!("cannot push to {}: {reason}", self.location)));
            }
            repo.reference(&ref_name, commit, true, "tend: pushed")
                .map_err(|e| self.err(e.message()))?;
            return Ok(Some(Written {
                revision: commit.to_string(),
            }));
        }
        let log = format!("tend: {}", message.lines().next().unwrap_or(""));
        if let Err(e) = repo.reference_matching(&ref_name, commit, true, head.id(), &log) {
            tracing::info!(branch = %branch, error = %e.message(), "branch moved; retrying the edit");
            return Ok(None);
        }
        if checkout {
            let mut options = git2::build::CheckoutBuilder::new();
            options.force().path(path.as_str());
            repo.checkout_head(Some(&mut options)).map_err(|e| {
                self.err(format!(
                    "committed {commit}, but checking out {path} failed: {}",
                    e.message()
                ))
            })?;
        }
        Ok(Some(Written {
            revision: commit.to_string(),
        }))
    }
}

impl SourceWriter for GitWriter {
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        message: &str,
    ) -> Result<Written, SourceError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        for _ in 0..2 {
            if let Some(written) = self.attempt(key, file, edit, message)? {
                return Ok(written);
            }
        }
        Err(self.err(format!("branch {MOVED} (twice); try again")))
    }
}

/// Writes to a directory source: the file is rewritten atomically (a temporary file renamed
/// over it), and the revision is the directory's new content hash.
pub struct DirWriter {
    root: PathBuf,
    busy: Mutex<()>,
}

impl DirWriter {
    pub fn open(root: &Path) -> DirWriter {
        DirWriter {
            root: root.to_path_buf(),
            busy: Mutex::new(()),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Dir {
            location: self.root.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

impl SourceWriter for DirWriter {
    fn edit(
        &self,
        key: &ObjectKey,
        file: &str,
        edit: &Edit,
        _message: &str,
    ) -> Result<Written, SourceError> {
        let _one_at_a_time = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if file.starts_with('/') || file.split('/').any(|p| p == "..") {
            return Err(self.err(format!("{file:?} is not a path inside the directory")));
        }
        let path = self.root.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| self.err(format!("{file} {MISSING}: {e}")))?;
        let edited = apply_edit(&text, key, edit).map_err(|e| SourceError::File {
            path: file.to_string(),
            reason: e.to_string(),
        })?;
        if edited != text {
            let dir = path.parent().unwrap_or(&self.root);
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A hidden name: the directory source ignores it while it exists.
            let temp = dir.join(format!(".tend-edit-{}-{name}", std::process::id()));
            let written = std::fs::File::create(&temp).and_then(|mut f| {
                f.write_all(edited.as_bytes())?;
                f.sync_all()
            });
            if let Err(e) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(self.err(format!("writing next to {file}: {e}")));
            }
            if let Ok(meta) = std::fs::metadata(&path) {
                let _ = std::fs::set_permissions(&temp, meta.permissions());
            }
            if let Err(e) = std::fs::rename(&temp, &path) {
                let _ = std::fs::remove_file(&temp);
                return Err(self.err(format!("replacing {file}: {e}")));
            }
        }
        let mut source = DirSource::open(&self.root, Limits::default().max_file_bytes)?;
        let revision = source
            .refresh()?
            .ok_or_else(|| self.err("the directory is empty after the edit"))?;
        Ok(Written { revision })
    }
}
