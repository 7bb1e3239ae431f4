//! Git sources (git2): a local repository, bare or with a work tree, read from its committed refs
//! and watched for ref changes; or a remote URL cloned (bare) under the state directory and
//! fetched on refresh.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use git2::{
    Delta, DiffOptions, ObjectType, Oid, Repository, Sort, Tree, TreeWalkMode, TreeWalkResult,
};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};

use super::watch::{WatchGuard, poke};
use super::{FileState, Files, RevisionInfo, Source, SourceError};

/// How often a remote is fetched when nobody says otherwise (`--interval`).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// How often a local repository's ref is compared, in case file events were missed.
const LOCAL_POLL: Duration = Duration::from_secs(5);
/// Symlinks pointing at symlinks are followed this many times at most.
const MAX_SYMLINK_HOPS: usize = 16;

const MODE_SYMLINK: i32 = 0o120000;
const MODE_SUBMODULE: i32 = 0o160000;

/// Where the repository lives.
enum Origin {
    /// Opened in place; refresh only resolves the ref.
    Local,
    /// Cloned under the state directory; refresh fetches from `url`.
    Remote { url: String },
}

pub struct GitSource {
    location: String,
    origin: Origin,
    repo: Repository,
    /// The branch to follow; `None` for a remote until its HEAD has been asked for.
    branch: Option<String>,
    /// `--path`, normalised: no leading, trailing or doubled `/`; `None` for the whole tree.
    subdir: Option<String>,
    max_file_bytes: usize,
    interval: Duration,
    /// The YAML-named symlinks (paths relative to `--path`) of the last commit whose files were
    /// read. A tree diff does not show a link whose target changed, so on every diff the targets
    /// of these links are compared too.
    symlinks: Option<(Oid, BTreeSet<String>)>,
}

impl GitSource {
    /// Opens a local repository (`location` is a path) or prepares the bare clone of a remote one
    /// (`location` is a `file://`, `https://`, `ssh://` URL or `git@host:path`) under
    /// `state_dir/sources/`. Nothing is fetched before the first `refresh()`.
    pub fn open(
        location: &str,
        branch: Option<&str>,
        path: Option<&str>,
        state_dir: &Path,
        max_file_bytes: usize,
    ) -> Result<GitSource, SourceError> {
        let shown = redact(location);
        let err = |reason: String| SourceError::Git {
            location: shown.clone(),
            reason,
        };
        let subdir = match path {
            Some(p) => normalise_subdir(p).map_err(err)?,
            None => None,
        };
        if let Some(b) = branch
            && !git2::Reference::is_valid_name(&format!("refs/heads/{b}"))
        {
            return Err(err(format!("invalid branch name {b:?}")));
        }
        let (origin, repo) = if is_url(location) {
            let dir = clone_dir(state_dir, location);
            let repo = if dir.join("HEAD").exists() {
                remove_stale_locks(&dir);
                Repository::open_bare(&dir)
            } else {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
                Repository::init_bare(&dir)
            }
            .map_err(|e| {
                err(format!(
                    "clone directory {}: {}",
                    dir.display(),
                    e.message()
                ))
            })?;
            (
                Origin::Remote {
                    url: location.to_string(),
                },
                repo,
            )
        } else {
            let repo = Repository::open(location).map_err(|e| err(e.message().to_string()))?;
            (Origin::Local, repo)
        };
        let branch = match (branch, &origin) {
            (Some(b), _) => Some(b.to_string()),
            (None, Origin::Local) => Some(local_default_branch(&repo)),
            (None, Origin::Remote { .. }) => None,
        };
        Ok(GitSource {
            location: shown.clone(),
            origin,
            repo,
            branch,
            subdir,
            max_file_bytes,
            interval: DEFAULT_INTERVAL,
            symlinks: None,
        })
    }

    /// How often `watch` asks a remote source to be fetched (default 30 s). No effect on local
    /// repositories, which are watched for ref changes instead.
    pub fn set_interval(&mut self, interval: Duration) {
        self.interval = interval;
    }

    /// The branch followed, once known (a remote's default branch is learnt at the first refresh).
    pub fn branch(&self) -> Option<&str> {
        self.branch.as_deref()
    }

    /// True when the source is a URL fetched into a clone under the state directory.
    pub fn is_remote(&self) -> bool {
        matches!(self.origin, Origin::Remote { .. })
    }

    /// The git directory read: the repository itself, or the bare clone of a remote.
    pub fn git_dir(&self) -> &Path {
        self.repo.path()
    }

    fn err(&self, reason: impl std::fmt::Display) -> SourceError {
        SourceError::Git {
            location: self.location.clone(),
            reason: reason.to_string(),
        }
    }

    /// The ref read for the branch: the branch itself locally, the remote-tracking ref for a clone.
    fn ref_name(&self, branch: &str) -> String {
        match self.origin {
            Origin::Local => format!("refs/heads/{branch}"),
            Origin::Remote { .. } => format!("refs/remotes/origin/{branch}"),
        }
    }

    fn fetch(&mut self, url: &str) -> Result<(), SourceError> {
        let mut remote = self
            .repo
            .remote_anonymous(url)
            .map_err(|e| self.err(e.message()))?;
        let branch = match &self.branch {
            Some(b) => b.clone(),
            None => {
                let conn = remote
                    .connect_auth(git2::Direction::Fetch, Some(callbacks()), None)
                    .map_err(|e| self.err(format!("connecting: {}", e.message())))?;
                let heads: Vec<String> = conn
                    .list()
                    .map_err(|e| self.err(e.message()))?
                    .iter()
                    .map(|h| h.name().to_string())
                    .collect();
                let head = conn
                    .default_branch()
                    .ok()
                    .and_then(|b| b.as_str().ok().map(str::to_string));
                drop(conn);
                let branch = head
                    .and_then(|h| h.strip_prefix("refs/heads/").map(str::to_string))
                    .or_else(|| {
                        ["main", "master"]
                            .into_iter()
                            .find(|b| heads.iter().any(|h| *h == format!("refs/heads/{b}")))
                            .map(str::to_string)
                    })
                    .unwrap_or_else(|| "main".to_string());
                tracing::info!(location = %self.location, %branch, "following the remote's default branch");
                self.branch = Some(branch.clone());
                branch
            }
        };
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let mut options = git2::FetchOptions::new();
        options
            .remote_callbacks(callbacks())
            .download_tags(git2::AutotagOption::None)
            .update_fetchhead(false);
        let mut proxy = git2::ProxyOptions::new();
        proxy.auto();
        options.proxy_options(proxy);
        remote
            .fetch(&[refspec.as_str()], Some(&mut options), None)
            .map_err(|e| self.err(format!("fetching: {}", e.message())))
    }

    fn find_commit(&self, id: &str) -> Result<git2::Commit<'_>, SourceError> {
        let oid =
            Oid::from_str(id).map_err(|e| self.err(format!("revision {id}: {}", e.message())))?;
        self.repo
            .find_commit(oid)
            .map_err(|e| self.err(format!("revision {id}: {}", e.message())))
    }

    /// The tree under `--path` at a commit, or `None` when that directory does not exist there.
    fn subtree<'r>(&'r self, root: &Tree<'r>) -> Result<Option<Tree<'r>>, SourceError> {
        let Some(sub) = &self.subdir else {
            return Ok(Some(root.clone()));
        };
        let entry = match root.get_path(Path::new(sub)) {
            Ok(entry) => entry,
            Err(e) if e.code() == git2::ErrorCode::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e.message())),
        };
        if entry.kind() != Some(ObjectType::Tree) {
            return Ok(None);
        }
        let tree = self
            .repo
            .find_tree(entry.id())
            .map_err(|e| self.err(e.message()))?;
        Ok(Some(tree))
    }

    /// Why `--path` is refused at a commit where it exists but is not a directory (a symlink, a
    /// file): read as "the directory is gone", it would prune everything; followed, a symlink
    /// could lead out of the repository. The revision is rejected instead.
    fn subdir_refusal(&self, root: &Tree<'_>) -> Option<(String, String)> {
        let sub = self.subdir.as_ref()?;
        let entry = root.get_path(Path::new(sub)).ok()?;
        if entry.kind() == Some(ObjectType::Tree) {
            return None;
        }
        let what = if entry.filemode() == 0o120000 {
            "a symlink"
        } else {
            "a file"
        };
        Some((
            sub.clone(),
            format!(
                "--path {sub} is {what} in this commit, not a directory; tend does not follow it"
            ),
        ))
    }

    /// The state of one tree entry (path relative to `--path`): its blob, or why it is refused.
    fn entry_state(&self, root: &Tree<'_>, rel_path: &str, mode: i32, id: Oid) -> FileState {
        if mode == MODE_SYMLINK {
            let link_path = match &self.subdir {
                Some(sub) => format!("{sub}/{rel_path}"),
                None => rel_path.to_string(),
            };
            return match follow_symlink(&self.repo, root, &link_path, id) {
                Ok(blob) => self.blob_state(blob),
                Err(reason) => FileState::Refused(reason),
            };
        }
        self.blob_state(id)
    }

    fn blob_state(&self, id: Oid) -> FileState {
        let size = match self.repo.odb().and_then(|odb| odb.read_header(id)) {
            Ok((size, _)) => size,
            Err(e) => return FileState::Refused(format!("reading blob {id}: {}", e.message())),
        };
        if size > self.max_file_bytes {
            return FileState::Refused(format!(
                "file is {size} bytes, over the limit of {} bytes",
                self.max_file_bytes
            ));
        }
        match self.repo.find_blob(id) {
            Ok(blob) => FileState::Present(blob.content().to_vec()),
            Err(e) => FileState::Refused(format!("reading blob {id}: {}", e.message())),
        }
    }

    fn all_files(
        &self,
        root: &Tree<'_>,
        sub: &Tree<'_>,
    ) -> Result<(BTreeMap<String, FileState>, BTreeSet<String>), SourceError> {
        let mut entries = Vec::new();
        sub.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name_bytes();
            if name.starts_with(b".") {
                return TreeWalkResult::Skip;
            }
            let mode = entry.filemode();
            if entry.kind() == Some(ObjectType::Tree)
                || mode == MODE_SUBMODULE
                || !is_yaml_name(name)
            {
                return TreeWalkResult::Ok;
            }
            entries.push((
                format!("{dir}{}", String::from_utf8_lossy(name)),
                name.to_vec(),
                mode,
                entry.id(),
            ));
            TreeWalkResult::Ok
        })
        .map_err(|e| self.err(e.message()))?;
        let mut files = BTreeMap::new();
        let mut links = BTreeSet::new();
        for (path, name, mode, id) in entries {
            let state = if std::str::from_utf8(&name).is_err() {
                FileState::Refused("file name is not valid UTF-8".to_string())
            } else {
                if mode == MODE_SYMLINK {
                    links.insert(path.clone());
                }
                self.entry_state(root, &path, mode, id)
            };
            files.insert(path, state);
        }
        Ok((files, links))
    }

    /// The YAML-named symlinks under `--path` in a tree, without reading any blob.
    fn symlinks_in(&self, sub: Option<&Tree<'_>>) -> Result<BTreeSet<String>, SourceError> {
        let mut links = BTreeSet::new();
        let Some(sub) = sub else {
            return Ok(links);
        };
        sub.walk(TreeWalkMode::PreOrder, |dir, entry| {
            let name = entry.name_bytes();
            if name.starts_with(b".") {
                return TreeWalkResult::Skip;
            }
            if entry.filemode() == MODE_SYMLINK
                && is_yaml_name(name)
                && let Ok(name) = std::str::from_utf8(name)
            {
                links.insert(format!("{dir}{name}"));
            }
            TreeWalkResult::Ok
        })
        .map_err(|e| self.err(e.message()))?;
        Ok(links)
    }

    /// Where the link at `rel_path` (relative to `--path`) leads in a commit: the blob, or why
    /// it is refused; `None` when there is no symlink there.
    fn link_target(
        &self,
        root: &Tree<'_>,
        sub: Option<&Tree<'_>>,
        rel_path: &str,
    ) -> Option<Result<Oid, String>> {
        let entry = sub?.get_path(Path::new(rel_path)).ok()?;
        if entry.filemode() != MODE_SYMLINK {
            return None;
        }
        let link_path = match &self.subdir {
            Some(sub) => format!("{sub}/{rel_path}"),
            None => rel_path.to_string(),
        };
        Some(follow_symlink(&self.repo, root, &link_path, entry.id()))
    }

    fn changed_files(
        &self,
        root: &Tree<'_>,
        sub: Option<&Tree<'_>>,
        base_sub: Option<&Tree<'_>>,
        links: &mut BTreeSet<String>,
    ) -> Result<BTreeMap<String, FileState>, SourceError> {
        let mut options = DiffOptions::new();
        options
            .include_typechange(true)
            .skip_binary_check(true)
            .ignore_submodules(true);
        let diff = self
            .repo
            .diff_tree_to_tree(base_sub, sub, Some(&mut options))
            .map_err(|e| self.err(e.message()))?;
        let mut files = BTreeMap::new();
        for delta in diff.deltas() {
            let old = delta.old_file();
            let new = delta.new_file();
            let old_path = old.path_bytes().filter(|p| is_manifest_path(p));
            let new_path = new.path_bytes().filter(|p| is_manifest_path(p));
            let new_mode = i32::from(new.mode());
            let new_is_file = matches!(
                delta.status(),
                Delta::Added | Delta::Modified | Delta::Typechange
            ) && new_mode != MODE_SUBMODULE
                && !new.id().is_zero();
            if let Some(path) = old_path {
                let path = String::from_utf8_lossy(path).into_owned();
                links.remove(&path);
                if !(new_is_file && new_path.is_some()) {
                    files.entry(path).or_insert(FileState::Removed);
                }
            }
            if let Some(path) = new_path.filter(|_| new_is_file) {
                let state = match std::str::from_utf8(path) {
                    Ok(p) => {
                        if new_mode == MODE_SYMLINK {
                            links.insert(p.to_string());
                        }
                        self.entry_state(root, p, new_mode, new.id())
                    }
                    Err(_) => FileState::Refused("file name is not valid UTF-8".to_string()),
                };
                files.insert(String::from_utf8_lossy(path).into_owned(), state);
            }
        }
        Ok(files)
    }
}

impl Source for GitSource {
    fn describe(&self) -> String {
        match &self.branch {
            Some(b) => format!("git {} ({b})", self.location),
            None => format!("git {} (remote HEAD)", self.location),
        }
    }

    fn refresh(&mut self) -> Result<Option<String>, SourceError> {
        if let Origin::Remote { url } = &self.origin {
            let url = url.clone();
            self.fetch(&url)?;
        }
        let Some(branch) = &self.branch else {
            return Ok(None);
        };
        match self.repo.refname_to_id(&self.ref_name(branch)) {
            Ok(oid) => Ok(Some(oid.to_string())),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("reading branch {branch}: {}", e.message()))),
        }
    }

    fn revisions(
        &mut self,
        since: Option<&str>,
        head: &str,
    ) -> Result<Vec<RevisionInfo>, SourceError> {
        let head_commit = self.find_commit(head)?;
        let head_oid = head_commit.id();
        let since_oid = since
            .and_then(|s| Oid::from_str(s).ok())
            .filter(|oid| self.repo.find_commit(*oid).is_ok());
        let Some(since_oid) = since_oid else {
            return Ok(vec![revision_info(&head_commit)]);
        };
        if since_oid == head_oid {
            return Ok(Vec::new());
        }
        // A force push leaves the applied revision off the new history: only the head counts.
        let descends = self
            .repo
            .graph_descendant_of(head_oid, since_oid)
            .map_err(|e| self.err(e.message()))?;
        if !descends {
            return Ok(vec![revision_info(&head_commit)]);
        }
        let mut walk = self.repo.revwalk().map_err(|e| self.err(e.message()))?;
        walk.simplify_first_parent()
            .map_err(|e| self.err(e.message()))?;
        walk.set_sorting(Sort::TOPOLOGICAL | Sort::REVERSE)
            .map_err(|e| self.err(e.message()))?;
        walk.push(head_oid).map_err(|e| self.err(e.message()))?;
        walk.hide(since_oid).map_err(|e| self.err(e.message()))?;
        let mut revisions = Vec::new();
        for oid in walk {
            let oid = oid.map_err(|e| self.err(e.message()))?;
            let commit = self
                .repo
                .find_commit(oid)
                .map_err(|e| self.err(e.message()))?;
            revisions.push(revision_info(&commit));
        }
        Ok(revisions)
    }

    fn files(&mut self, id: &str, base: Option<&str>) -> Result<Files, SourceError> {
        let (files, links) = self.files_and_links(id, base)?;
        self.symlinks = Some(links);
        Ok(files)
    }

    fn watch(&self, notify: tokio::sync::mpsc::Sender<()>) -> Result<Box<dyn Send>, SourceError> {
        match &self.origin {
            Origin::Remote { .. } => {
                let interval = self.interval;
                let (stop, stopped) = mpsc::channel();
                let thread = std::thread::Builder::new()
                    .name("tend-git-fetch-timer".to_string())
                    .spawn(move || {
                        while let Err(mpsc::RecvTimeoutError::Timeout) =
                            stopped.recv_timeout(interval)
                        {
                            if notify.is_closed() {
                                break;
                            }
                            poke(&notify);
                        }
                    })
                    .map_err(|e| self.err(format!("starting the fetch timer: {e}")))?;
                Ok(Box::new(WatchGuard {
                    watcher: None,
                    threads: vec![(stop, thread)],
                }))
            }
            Origin::Local => self.watch_local(notify),
        }
    }
}

impl GitSource {
    /// The files of `files()`, and the symlinks of revision `id` to remember for the next diff.
    fn files_and_links(
        &self,
        id: &str,
        base: Option<&str>,
    ) -> Result<(Files, (Oid, BTreeSet<String>)), SourceError> {
        let commit = self.find_commit(id)?;
        let root = commit.tree().map_err(|e| self.err(e.message()))?;
        if let Some(refusal) = self.subdir_refusal(&root) {
            return Ok(refusal_files(refusal, commit.id()));
        }
        let sub = self.subtree(&root)?;
        // After a commit whose `--path` was refused, list everything: a diff from it would
        // miss the files that were removed meanwhile.
        let base = match base {
            Some(b) => {
                let b_root = self
                    .find_commit(b)?
                    .tree()
                    .map_err(|e| self.err(e.message()))?;
                self.subdir_refusal(&b_root).is_none().then_some(b)
            }
            None => None,
        };
        let Some(base) = base else {
            let (files, links) = match &sub {
                Some(sub) => self.all_files(&root, sub)?,
                None => Default::default(),
            };
            let files = Files {
                complete: true,
                files,
            };
            return Ok((files, (commit.id(), links)));
        };
        let base_commit = self.find_commit(base)?;
        let base_root = base_commit.tree().map_err(|e| self.err(e.message()))?;
        let base_sub = self.subtree(&base_root)?;
        let base_links = match &self.symlinks {
            Some((known, links)) if *known == base_commit.id() => links.clone(),
            _ => self.symlinks_in(base_sub.as_ref())?,
        };
        let mut links = base_links.clone();
        let mut files = self.changed_files(&root, sub.as_ref(), base_sub.as_ref(), &mut links)?;
        // Links the diff did not show may still lead somewhere else now.
        for link in base_links.intersection(&links) {
            if files.contains_key(link) {
                continue;
            }
            let before = self.link_target(&base_root, base_sub.as_ref(), link);
            let now = self.link_target(&root, sub.as_ref(), link);
            if before != now {
                let state = match now {
                    Some(Ok(blob)) => self.blob_state(blob),
                    Some(Err(reason)) => FileState::Refused(reason),
                    None => FileState::Removed,
                };
                files.insert(link.clone(), state);
            }
        }
        let files = Files {
            complete: false,
            files,
        };
        Ok((files, (commit.id(), links)))
    }

    /// Watches `<gitdir>/refs` and `<gitdir>/packed-refs` so that a push is noticed at once, and
    /// compares the branch's target every few seconds in case an event was missed.
    fn watch_local(
        &self,
        notify: tokio::sync::mpsc::Sender<()>,
    ) -> Result<Box<dyn Send>, SourceError> {
        let git_dir = self.repo.commondir().to_path_buf();
        let refs = git_dir.join("refs");
        let packed = git_dir.join("packed-refs");
        let events = notify.clone();
        let (refs_c, packed_c) = (refs.clone(), packed.clone());
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    if matches!(event.kind, EventKind::Access(_)) {
                        return;
                    }
                    let relevant = event.paths.iter().any(|p| {
                        let lock = p.extension().is_some_and(|e| e == "lock");
                        !lock && (p.starts_with(&refs_c) || *p == packed_c)
                    });
                    if relevant {
                        poke(&events);
                    }
                }
                // An overflowed queue may hide a ref change: better one refresh too many.
                Err(_) => poke(&events),
            })
            .map_err(|e| self.err(format!("watching: {e}")))?;
        watcher
            .watch(&git_dir, RecursiveMode::NonRecursive)
            .map_err(|e| self.err(format!("watching {}: {e}", git_dir.display())))?;
        if refs.is_dir() {
            watcher
                .watch(&refs, RecursiveMode::Recursive)
                .map_err(|e| self.err(format!("watching {}: {e}", refs.display())))?;
        }

        let ref_name = self
            .branch
            .as_deref()
            .map(|b| self.ref_name(b))
            .unwrap_or_default();
        let poll_repo = Repository::open_bare(&git_dir)
            .or_else(|_| Repository::open(&git_dir))
            .map_err(|e| self.err(e.message()))?;
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tend-git-ref-poll".to_string())
            .spawn(move || {
                let target = |repo: &Repository| repo.refname_to_id(&ref_name).ok();
                let mut last = target(&poll_repo);
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LOCAL_POLL) {
                    if notify.is_closed() {
                        break;
                    }
                    let now = target(&poll_repo);
                    if now != last {
                        tracing::debug!(reference = %ref_name, "ref change found by polling");
                        last = now;
                        poke(&notify);
                    }
                }
            })
            .map_err(|e| self.err(format!("starting the ref poll: {e}")))?;
        Ok(Box::new(WatchGuard {
            watcher: Some(watcher),
            threads: vec![(stop, thread)],
        }))
    }
}

fn revision_info(commit: &git2::Commit<'_>) -> RevisionInfo {
    let author = commit.author();
    RevisionInfo {
        id: commit.id().to_string(),
        parent: commit.parent_id(0).ok().map(|p| p.to_string()),
        message: String::from_utf8_lossy(commit.message_bytes()).into_owned(),
        author: format!(
            "{} <{}>",
            String::from_utf8_lossy(author.name_bytes()),
            String::from_utf8_lossy(author.email_bytes())
        ),
        time: commit.time().seconds(),
    }
}

/// Credentials for remotes: the ssh agent then the usual key files for ssh, git's credential
/// helpers for https. A few attempts only, so that a refused key does not loop forever.
pub(crate) fn callbacks() -> git2::RemoteCallbacks<'static> {
    let mut callbacks = git2::RemoteCallbacks::new();
    let mut attempts = 0;
    callbacks.credentials(move |url, username, allowed| {
        attempts += 1;
        if attempts > 4 {
            return Err(git2::Error::from_str("authentication failed"));
        }
        let user = username.unwrap_or("git");
        if allowed.contains(git2::CredentialType::SSH_KEY) {
            if attempts == 1 {
                return git2::Cred::ssh_key_from_agent(user);
            }
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            let keys = ["id_ed25519", "id_ecdsa", "id_rsa"];
            if let Some(key) = keys
                .iter()
                .map(|k| home.join(".ssh").join(k))
                .filter(|k| k.exists())
                .nth(attempts - 2)
            {
                return git2::Cred::ssh_key(user, None, &key, None);
            }
            return Err(git2::Error::from_str(
                "no ssh key accepted (tried the agent and ~/.ssh)",
            ));
        }
        if allowed.contains(git2::CredentialType::USER_PASS_PLAINTEXT) {
            let config = git2::Config::open_default()?;
            return git2::Cred::credential_helper(&config, url, username);
        }
        if allowed.contains(git2::CredentialType::USERNAME) {
            return git2::Cred::username(user);
        }
        git2::Cred::default()
    });
    callbacks
}

/// A URL (`scheme://...`) or scp-like `user@host:path`; anything else is a local path.
pub(crate) fn is_url(location: &str) -> bool {
    if location.contains("://") {
        return true;
    }
    match location.split_once(':') {
        Some((before, _)) => before.contains('@') && !before.contains('/'),
        None => false,
    }
}

/// The location for messages: a password or token in a URL is replaced by `***`
/// (`https://user:secret@host/r` -> `https://user:***@host/r`, `https://token@host/r` ->
/// `https://***@host/r`; an ssh user name is kept).
pub(crate) fn redact(location: &str) -> String {
    let Some((scheme, rest)) = location.split_once("://") else {
        return location.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return location.to_string();
    };
    let userinfo = &rest[..at];
    let hidden = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None if scheme.starts_with("http") => "***".to_string(),
        None => userinfo.to_string(),
    };
    format!("{scheme}://{hidden}{}", &rest[at..])
}

/// Removes the lock files a process killed in the middle of a fetch or a commit left in
/// `clone` (a ref's `<name>.lock`, `packed-refs.lock`, `HEAD.lock`, `config.lock`,
/// `shallow.lock`): git takes a lock by creating that file and never breaks one, so a single
/// SIGKILL at the wrong moment would make every later fetch fail with "failed to lock file".
/// Only for the clone under the state directory, which this serve alone uses (the store's
/// lock keeps a second serve off the same state), and only when opening it, before any of
/// this process's own writes; a user's local repository is never touched. Returns what was
/// removed.
pub fn remove_stale_locks(clone: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut remove = |path: PathBuf| match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::warn!(lock = %path.display(), "removed a stale lock left by an earlier stop");
            removed.push(path);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(lock = %path.display(), "cannot remove a stale lock: {e}"),
    };
    for name in [
        "packed-refs.lock",
        "HEAD.lock",
        "config.lock",
        "shallow.lock",
        "FETCH_HEAD.lock",
    ] {
        remove(clone.join(name));
    }
    let mut dirs = vec![clone.join("refs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "lock") => {
                    remove(path)
                }
                _ => {}
            }
        }
    }
    removed
}

/// `state_dir/sources/<first 16 hex digits of sha256(url)>`.
pub(crate) fn clone_dir(state_dir: &Path, url: &str) -> PathBuf {
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    state_dir.join("sources").join(&digest[..16])
}

/// The branch HEAD points at, else `main` or `master` when one exists (else `main`).
pub(crate) fn local_default_branch(repo: &Repository) -> String {
    if let Ok(head) = repo.find_reference("HEAD")
        && let Ok(Some(target)) = head.symbolic_target()
        && let Some(branch) = target.strip_prefix("refs/heads/")
    {
        return branch.to_string();
    }
    ["main", "master"]
        .into_iter()
        .find(|b| repo.find_reference(&format!("refs/heads/{b}")).is_ok())
        .unwrap_or("main")
        .to_string()
}

/// Checks `--path`: relative, no `..`; returns it without empty or `.` components.
pub(crate) fn normalise_subdir(path: &str) -> Result<Option<String>, String> {
    if path.starts_with('/') || Path::new(path).is_absolute() {
        return Err(format!(
            "--path {path:?} must be relative to the repository root"
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("--path {path:?} must not contain '..'")),
            p => parts.push(p),
        }
    }
    Ok(if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    })
}

fn is_yaml_name(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.ends_with(b".yaml") || lower.ends_with(b".yml")
}

/// A YAML file outside hidden directories (`.github/workflows/*.yml` are not manifests).
fn is_manifest_path(path: &[u8]) -> bool {
    is_yaml_name(path) && !path.split(|b| *b == b'/').any(|c| c.starts_with(b"."))
}

/// Resolves the symlink at `link_path` (repository-relative) whose target is stored in blob
/// `link_blob`, against the link's directory, following further links; returns the blob it
/// finally names, or why it is refused.
fn follow_symlink(
    repo: &Repository,
    root: &Tree<'_>,
    link_path: &str,
    link_blob: Oid,
) -> Result<Oid, String> {
    let read_target = |id: Oid| -> Result<String, String> {
        let blob = repo
            .find_blob(id)
            .map_err(|e| format!("reading symlink: {}", e.message()))?;
        Ok(String::from_utf8_lossy(blob.content()).into_owned())
    };
    let original = read_target(link_blob)?;
    let leaves = || format!("symlink to {original} leaves the repository");
    let mut dir: Vec<String> = link_path.split('/').map(str::to_string).collect();
    dir.pop();
    let mut pending: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut target = original.clone();
    let mut hops = 0;
    loop {
        if target.starts_with('/') {
            return Err(leaves());
        }
        for part in target.split('/').rev() {
            pending.push_front(part.to_string());
        }
        let mut followed = None;
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if dir.pop().is_none() {
                        return Err(leaves());
                    }
                    continue;
                }
                _ => dir.push(part),
            }
            let here = dir.join("/");
            let entry = root.get_path(Path::new(&here)).map_err(|_| {
                format!("symlink to {original}: {here} does not exist in this revision")
            })?;
            if entry.filemode() == MODE_SYMLINK {
                followed = Some(entry.id());
                dir.pop();
                break;
            }
        }
        match followed {
            Some(next) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(format!(
                        "symlink to {original}: too many levels of symbolic links"
                    ));
                }
                target = read_target(next)?;
            }
            None => break,
        }
    }
    let here = dir.join("/");
    if here.is_empty() {
        return Err(format!(
            "symlink to {original} points at the repository root"
        ));
    }
    let entry = root
        .get_path(Path::new(&here))
        .map_err(|_| format!("symlink to {original}: {here} does not exist in this revision"))?;
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(format!("symlink to {original}: {here} is not a file"));
    }
    Ok(entry.id())
}

/// The files of a revision whose `--path` is refused: that one refusal, nothing else.
fn refusal_files((path, reason): (String, String), id: Oid) -> (Files, (Oid, BTreeSet<String>)) {
    let files = Files {
        complete: true,
        files: [(path, FileState::Refused(reason))].into_iter().collect(),
    };
    (files, (id, BTreeSet::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_paths() {
        assert!(is_url("https://example.com/r.git"));
        assert!(is_url("file:///srv/r.git"));
        assert!(is_url("ssh://git@host/r.git"));
        assert!(is_url("git@github.com:org/r.git"));
        assert!(!is_url("/srv/repo"));
        assert!(!is_url("./repo"));
        assert!(!is_url("dir/with@at:colon"));
    }

    #[test]
    fn secrets_in_urls_are_not_shown() {
        assert_eq!(
            redact("https://u:tok@host/r.git"),
            "https://u:***@host/r.git"
        );
        assert_eq!(redact("https://tok@host/r.git"), "https://***@host/r.git");
        assert_eq!(redact("ssh://git@host/r.git"), "ssh://git@host/r.git");
        assert_eq!(redact("https://host/a@b"), "https://host/a@b");
        assert_eq!(redact("/srv/repo"), "/srv/repo");
        assert_eq!(redact("git@host:r.git"), "git@host:r.git");
    }

    #[test]
    fn subdir_rules() {
        assert_eq!(
            normalise_subdir("deploy/prod/").unwrap(),
            Some("deploy/prod".to_string())
        );
        assert_eq!(normalise_subdir("./").unwrap(), None);
        assert!(normalise_subdir("../x").is_err());
        assert!(normalise_subdir("a/../b").is_err());
        assert!(normalise_subdir("/etc").is_err());
    }

    #[test]
    fn manifest_paths() {
        assert!(is_manifest_path(b"a/b.yaml"));
        assert!(is_manifest_path(b"c.YML"));
        assert!(!is_manifest_path(b".github/workflows/ci.yml"));
        assert!(!is_manifest_path(b"README.md"));
    }

    #[test]
    fn clone_dir_is_stable_per_url() {
        let a = clone_dir(Path::new("/s"), "https://x/r.git");
        assert_eq!(a, clone_dir(Path::new("/s"), "https://x/r.git"));
        assert_ne!(a, clone_dir(Path::new("/s"), "https://x/q.git"));
        assert!(a.starts_with("/s/sources"));
    }
}
