//! The git source against real repositories made with the git CLI: bare and not, pushes,
//! several commits at once, force pushes, `--path`, tree diffs, symlinks, size limits, a remote
//! over `file://`, branch selection, and the ref watch.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tend::source::git::GitSource;
use tend::source::{FileState, Source};

const MAX: usize = 1 << 20;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Ann Example")
        .env("GIT_AUTHOR_EMAIL", "ann@example.com")
        .env("GIT_COMMITTER_NAME", "Ann Example")
        .env("GIT_COMMITTER_EMAIL", "ann@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// A repository with a work tree, on branch `main`.
fn work_repo(tmp: &TempDir, name: &str) -> PathBuf {
    let dir = tmp.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    git(&dir, &["init", "-q", "-b", "main"]);
    dir
}

/// A bare repository on `main`, and a clone of it to push from.
fn bare_and_clone(tmp: &TempDir) -> (PathBuf, PathBuf) {
    let bare = tmp.path().join("origin.git");
    git(
        tmp.path(),
        &["init", "-q", "--bare", "-b", "main", bare.to_str().unwrap()],
    );
    let clone = tmp.path().join("clone");
    git(
        tmp.path(),
        &[
            "clone",
            "-q",
            bare.to_str().unwrap(),
            clone.to_str().unwrap(),
        ],
    );
    git(&clone, &["checkout", "-q", "-B", "main"]);
    (bare, clone)
}

fn open(location: &Path, branch: Option<&str>, path: Option<&str>, state: &Path) -> GitSource {
    GitSource::open(location.to_str().unwrap(), branch, path, state, MAX).expect("open")
}

fn present(content: &str) -> FileState {
    FileState::Present(content.as_bytes().to_vec())
}

fn names(files: &tend::source::Files) -> Vec<&str> {
    files.files.keys().map(String::as_str).collect()
}

async fn notified_within(rx: &mut tokio::sync::mpsc::Receiver<()>, limit: Duration) -> bool {
    tokio::time::timeout(limit, rx.recv())
        .await
        .is_ok_and(|m| m.is_some())
}

#[test]
fn non_bare_repository_reads_commits_not_the_work_tree() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    write(&repo, "a.yaml", "kind: A\n");
    write(&repo, "b.yml", "kind: B\n");
    write(&repo, "nested/deep/c.yaml", "kind: C\n");
    write(&repo, "README.md", "# not yaml\n");
    write(&repo, ".github/workflows/ci.yml", "on: push\n");
    let head = commit_all(&repo, "First commit\n\nWith a body.");
    // Uncommitted changes are invisible.
    write(&repo, "a.yaml", "kind: Changed\n");
    write(&repo, "uncommitted.yaml", "kind: U\n");

    let mut source = open(&repo, None, None, tmp.path());
    assert_eq!(source.branch(), Some("main"));
    assert_eq!(source.describe(), format!("git {} (main)", repo.display()));
    assert_eq!(source.refresh().unwrap(), Some(head.clone()));

    let files = source.files(&head, None).unwrap();
    assert!(files.complete);
    assert_eq!(names(&files), ["a.yaml", "b.yml", "nested/deep/c.yaml"]);
    assert_eq!(files.files["a.yaml"], present("kind: A\n"));

    let revisions = source.revisions(None, &head).unwrap();
    assert_eq!(revisions.len(), 1);
    let first = &revisions[0];
    assert_eq!(first.id, head);
    assert_eq!(first.parent, None);
    assert_eq!(first.message.trim_end(), "First commit\n\nWith a body.");
    assert_eq!(first.subject(), "First commit");
    assert_eq!(first.author, "Ann Example <ann@example.com>");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - first.time).abs() < 120,
        "commit time {} vs now {now}",
        first.time
    );

    let second = commit_all(&repo, "Second");
    assert_eq!(source.refresh().unwrap(), Some(second.clone()));
    let revisions = source.revisions(Some(&head), &second).unwrap();
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0].parent.as_deref(), Some(head.as_str()));
    assert!(source.revisions(Some(&second), &second).unwrap().is_empty());
}

#[tokio::test]
async fn push_to_bare_repository_is_noticed_at_once() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    write(&clone, "app.yaml", "v: 1\n");
    let first = commit_all(&clone, "v1");
    git(&clone, &["push", "-q", "origin", "main"]);

    let mut source = open(&bare, None, None, tmp.path());
    assert_eq!(source.refresh().unwrap(), Some(first.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let guard = source.watch(tx).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    while rx.try_recv().is_ok() {}

    write(&clone, "app.yaml", "v: 2\n");
    let second = commit_all(&clone, "v2");
    let pushed = Instant::now();
    git(&clone, &["push", "-q", "origin", "main"]);
    assert!(
        notified_within(&mut rx, Duration::from_secs(1)).await,
        "no notification within 1 s of the push"
    );
    eprintln!("notified {:?} after the push started", pushed.elapsed());
    assert_eq!(source.refresh().unwrap(), Some(second.clone()));
    let files = source.files(&second, Some(&first)).unwrap();
    assert_eq!(files.files["app.yaml"], present("v: 2\n"));

    // packed refs (git gc, git pack-refs) are watched too.
    git(&bare, &["pack-refs", "--all"]);
    tokio::time::sleep(Duration::from_millis(50)).await;
    while rx.try_recv().is_ok() {}
    let third = commit_all(&clone, "v3");
    git(&clone, &["push", "-q", "origin", "main"]);
    assert!(notified_within(&mut rx, Duration::from_secs(1)).await);
    assert_eq!(source.refresh().unwrap(), Some(third));

    // The watch ends with its guard.
    drop(guard);
    tokio::time::sleep(Duration::from_millis(50)).await;
    while rx.try_recv().is_ok() {}
    commit_all(&clone, "v4");
    git(&clone, &["push", "-q", "origin", "main"]);
    assert!(!notified_within(&mut rx, Duration::from_millis(300)).await);
}

#[test]
fn several_commits_pushed_at_once_are_all_listed_oldest_first() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    write(&clone, "app.yaml", "v: 0\n");
    let base = commit_all(&clone, "base");
    git(&clone, &["push", "-q", "origin", "main"]);
    let mut source = open(&bare, None, None, tmp.path());
    assert_eq!(source.refresh().unwrap(), Some(base.clone()));

    let mut ids = Vec::new();
    for i in 1..=3 {
        write(&clone, "app.yaml", &format!("v: {i}\n"));
        ids.push(commit_all(&clone, &format!("change {i}")));
    }
    // A merge from a side branch: only first parents are revisions.
    git(&clone, &["checkout", "-q", "-b", "side", "HEAD~1"]);
    write(&clone, "side.yaml", "side: true\n");
    commit_all(&clone, "side work");
    git(&clone, &["checkout", "-q", "main"]);
    git(
        &clone,
        &["merge", "-q", "--no-ff", "-m", "merge side", "side"],
    );
    ids.push(git(&clone, &["rev-parse", "HEAD"]));
    git(&clone, &["push", "-q", "origin", "main"]);

    let head = source.refresh().unwrap().unwrap();
    assert_eq!(&head, ids.last().unwrap());
    let revisions = source.revisions(Some(&base), &head).unwrap();
    let got: Vec<&str> = revisions.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ids.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(revisions[0].parent.as_deref(), Some(base.as_str()));
    assert_eq!(revisions[1].parent.as_deref(), Some(ids[0].as_str()));
    assert_eq!(revisions[3].subject(), "merge side");
    assert_eq!(revisions[3].parent.as_deref(), Some(ids[2].as_str()));
}

#[test]
fn force_push_gives_only_the_head() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    write(&clone, "app.yaml", "v: 1\n");
    commit_all(&clone, "one");
    write(&clone, "app.yaml", "v: 2\n");
    let two = commit_all(&clone, "two");
    git(&clone, &["push", "-q", "origin", "main"]);
    let mut source = open(&bare, None, None, tmp.path());
    assert_eq!(source.refresh().unwrap(), Some(two.clone()));

    git(&clone, &["reset", "-q", "--hard", "HEAD~1"]);
    write(&clone, "app.yaml", "v: rewritten\n");
    commit_all(&clone, "rewritten a");
    let rewritten = commit_all(&clone, "rewritten b");
    git(&clone, &["push", "-q", "--force", "origin", "main"]);

    assert_eq!(source.refresh().unwrap(), Some(rewritten.clone()));
    let revisions = source.revisions(Some(&two), &rewritten).unwrap();
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0].id, rewritten);
    // An unknown base (a directory hash, a garbage-collected commit) is the same case.
    let revisions = source
        .revisions(Some("0123456789012345678901234567890123456789"), &rewritten)
        .unwrap();
    assert_eq!(revisions.len(), 1);
    let revisions = source.revisions(Some("sha256:abc"), &rewritten).unwrap();
    assert_eq!(revisions.len(), 1);
}

#[test]
fn path_restricts_files_to_a_subdirectory() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    write(&repo, "deploy/prod/web.yaml", "web\n");
    write(&repo, "deploy/prod/db/db.yml", "db\n");
    write(&repo, "deploy/staging/web.yaml", "staging\n");
    write(&repo, "root.yaml", "root\n");
    let first = commit_all(&repo, "layout");

    let mut source = open(&repo, None, Some("deploy/prod/"), tmp.path());
    assert_eq!(source.refresh().unwrap(), Some(first.clone()));
    let files = source.files(&first, None).unwrap();
    assert_eq!(names(&files), ["db/db.yml", "web.yaml"]);

    write(&repo, "deploy/staging/web.yaml", "staging 2\n");
    write(&repo, "root.yaml", "root 2\n");
    let outside = commit_all(&repo, "changes outside --path");
    let files = source.files(&outside, Some(&first)).unwrap();
    assert!(!files.complete);
    assert!(files.files.is_empty(), "{:?}", files.files);

    // A revision without the directory has no files.
    git(&repo, &["rm", "-q", "-r", "deploy/prod"]);
    let gone = commit_all(&repo, "remove prod");
    assert!(source.files(&gone, None).unwrap().files.is_empty());
    let files = source.files(&gone, Some(&outside)).unwrap();
    assert_eq!(files.files["web.yaml"], FileState::Removed);
    assert_eq!(files.files["db/db.yml"], FileState::Removed);

    for bad in ["../elsewhere", "deploy/../../x", "/etc"] {
        let err = GitSource::open(repo.to_str().unwrap(), None, Some(bad), tmp.path(), MAX);
        assert!(err.is_err(), "--path {bad} accepted");
    }
}

#[test]
fn tree_diff_reports_only_what_changed() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    for i in 0..50 {
        write(
            &repo,
            &format!("apps/app{i:02}.yaml"),
            &format!("app: {i}\n"),
        );
    }
    write(&repo, "keep.yaml", "keep\n");
    write(&repo, "old-name.yaml", "moved\n");
    let base = commit_all(&repo, "fifty apps");

    write(&repo, "apps/app07.yaml", "app: seven\n");
    std::fs::remove_file(repo.join("apps/app30.yaml")).unwrap();
    git(&repo, &["mv", "old-name.yaml", "new-name.yml"]);
    write(&repo, "notes.txt", "not yaml\n");
    let head = commit_all(&repo, "one change, one deletion, one rename");

    let mut source = open(&repo, None, None, tmp.path());
    let files = source.files(&head, Some(&base)).unwrap();
    assert!(!files.complete);
    assert_eq!(
        names(&files),
        [
            "apps/app07.yaml",
            "apps/app30.yaml",
            "new-name.yml",
            "old-name.yaml"
        ]
    );
    assert_eq!(files.files["apps/app07.yaml"], present("app: seven\n"));
    assert_eq!(files.files["apps/app30.yaml"], FileState::Removed);
    assert_eq!(files.files["old-name.yaml"], FileState::Removed);
    assert_eq!(files.files["new-name.yml"], present("moved\n"));

    // Same revision: nothing changed.
    assert!(source.files(&head, Some(&head)).unwrap().files.is_empty());
}

#[test]
fn symlinks_inside_are_followed_and_outside_refused() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    write(&repo, "shared/base.yaml", "base\n");
    write(&repo, "deploy/real.yaml", "real\n");
    let link =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, repo.join(name)).unwrap();
    link("real.yaml", "deploy/same-dir.yaml");
    link("../shared/base.yaml", "deploy/up.yaml");
    link("../../etc/passwd", "deploy/escape.yaml");
    link("/etc/hosts", "deploy/absolute.yaml");
    link("same-dir.yaml", "deploy/chain.yaml");
    link("missing.yaml", "deploy/dangling.yaml");
    let head = commit_all(&repo, "links");

    // With --path, a link may leave the subdirectory as long as it stays in the repository.
    let mut source = open(&repo, None, Some("deploy"), tmp.path());
    let files = source.files(&head, None).unwrap().files;
    assert_eq!(files["same-dir.yaml"], present("real\n"));
    assert_eq!(files["up.yaml"], present("base\n"));
    assert_eq!(files["chain.yaml"], present("real\n"));
    assert_eq!(
        files["escape.yaml"],
        FileState::Refused("symlink to ../../etc/passwd leaves the repository".into())
    );
    assert_eq!(
        files["absolute.yaml"],
        FileState::Refused("symlink to /etc/hosts leaves the repository".into())
    );
    assert!(
        matches!(&files["dangling.yaml"], FileState::Refused(r) if r.contains("does not exist"))
    );

    // A target that changes outside --path changes the link's file, though the diff of the
    // subdirectory does not show it; with the links of the base known, or found afresh.
    write(&repo, "shared/base.yaml", "base 2\n");
    let target_changed = commit_all(&repo, "change the target only");
    let files = source.files(&target_changed, Some(&head)).unwrap().files;
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files["up.yaml"], present("base 2\n"));
    let mut fresh = open(&repo, None, Some("deploy"), tmp.path());
    let files = fresh.files(&target_changed, Some(&head)).unwrap().files;
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files["up.yaml"], present("base 2\n"));
    let head = target_changed;

    // A link changed in a later commit goes through the diff too.
    std::fs::remove_file(repo.join("deploy/up.yaml")).unwrap();
    link("../../../root/.ssh/id_rsa", "deploy/up.yaml");
    let second = commit_all(&repo, "escape");
    let files = source.files(&second, Some(&head)).unwrap().files;
    assert_eq!(
        names(&tend::source::Files {
            complete: false,
            files: files.clone()
        }),
        ["up.yaml"]
    );
    assert!(
        matches!(&files["up.yaml"], FileState::Refused(r) if r.contains("leaves the repository"))
    );
}

#[test]
fn oversize_files_are_refused() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    write(&repo, "small.yaml", "ok\n");
    write(&repo, "big.yaml", &"x".repeat(200));
    let head = commit_all(&repo, "sizes");
    let mut source = GitSource::open(repo.to_str().unwrap(), None, None, tmp.path(), 100).unwrap();
    let files = source.files(&head, None).unwrap().files;
    assert_eq!(files["small.yaml"], present("ok\n"));
    assert_eq!(
        files["big.yaml"],
        FileState::Refused("file is 200 bytes, over the limit of 100 bytes".into())
    );
}

#[tokio::test]
async fn remote_over_file_url_is_cloned_and_fetched() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    write(&clone, "app.yaml", "v: 1\n");
    let first = commit_all(&clone, "v1");
    git(&clone, &["push", "-q", "origin", "main"]);

    let state = tmp.path().join("state");
    let url = format!("file://{}", bare.display());
    let mut source = GitSource::open(&url, None, None, &state, MAX).unwrap();
    assert!(source.is_remote());
    assert!(source.git_dir().starts_with(state.join("sources")));
    assert_eq!(source.refresh().unwrap(), Some(first.clone()));
    assert_eq!(source.branch(), Some("main"));
    assert_eq!(
        source.files(&first, None).unwrap().files["app.yaml"],
        present("v: 1\n")
    );

    write(&clone, "app.yaml", "v: 2\n");
    let second = commit_all(&clone, "v2");
    write(&clone, "app.yaml", "v: 3\n");
    let third = commit_all(&clone, "v3");
    git(&clone, &["push", "-q", "origin", "main"]);
    assert_eq!(source.refresh().unwrap(), Some(third.clone()));
    let ids: Vec<String> = source
        .revisions(Some(&first), &third)
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, [second, third.clone()]);

    // A force push upstream force-updates the remote-tracking ref.
    git(&clone, &["reset", "-q", "--hard", &first]);
    let rewritten = commit_all(&clone, "rewritten");
    git(&clone, &["push", "-q", "--force", "origin", "main"]);
    assert_eq!(source.refresh().unwrap(), Some(rewritten.clone()));
    assert_eq!(source.revisions(Some(&third), &rewritten).unwrap().len(), 1);

    // Reopening uses the existing clone.
    drop(source);
    let mut again = GitSource::open(&url, Some("main"), None, &state, MAX).unwrap();
    assert_eq!(again.refresh().unwrap(), Some(rewritten));
    assert_eq!(std::fs::read_dir(state.join("sources")).unwrap().count(), 1);

    // Remotes are fetched on a timer.
    again.set_interval(Duration::from_millis(100));
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let guard = again.watch(tx).unwrap();
    assert!(notified_within(&mut rx, Duration::from_secs(1)).await);
    assert!(notified_within(&mut rx, Duration::from_secs(1)).await);
    drop(guard);
}

#[test]
fn remote_default_branch_follows_the_remote_head() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    git(&clone, &["checkout", "-q", "-b", "trunk"]);
    write(&clone, "t.yaml", "trunk\n");
    let trunk = commit_all(&clone, "trunk");
    git(&clone, &["push", "-q", "origin", "trunk"]);
    git(&bare, &["symbolic-ref", "HEAD", "refs/heads/trunk"]);

    let url = format!("file://{}", bare.display());
    let mut source = GitSource::open(&url, None, None, &tmp.path().join("state"), MAX).unwrap();
    assert_eq!(source.branch(), None);
    assert_eq!(source.refresh().unwrap(), Some(trunk));
    assert_eq!(source.branch(), Some("trunk"));
}

#[test]
fn branch_selection_and_empty_repositories() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "repo");
    write(&repo, "app.yaml", "main\n");
    let main = commit_all(&repo, "main");
    git(&repo, &["checkout", "-q", "-b", "prod"]);
    write(&repo, "app.yaml", "prod\n");
    let prod = commit_all(&repo, "prod");
    git(&repo, &["checkout", "-q", "main"]);

    assert_eq!(
        open(&repo, None, None, tmp.path()).refresh().unwrap(),
        Some(main.clone())
    );
    assert_eq!(
        open(&repo, Some("prod"), None, tmp.path())
            .refresh()
            .unwrap(),
        Some(prod)
    );
    assert_eq!(
        open(&repo, Some("nope"), None, tmp.path())
            .refresh()
            .unwrap(),
        None
    );
    // The checked-out branch is HEAD's, whatever its name.
    git(&repo, &["checkout", "-q", "prod"]);
    assert_eq!(open(&repo, None, None, tmp.path()).branch(), Some("prod"));
    // A detached HEAD falls back to main.
    git(&repo, &["checkout", "-q", "--detach", &main]);
    assert_eq!(open(&repo, None, None, tmp.path()).branch(), Some("main"));

    let empty = tmp.path().join("empty.git");
    git(
        tmp.path(),
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            empty.to_str().unwrap(),
        ],
    );
    assert_eq!(
        open(&empty, None, None, tmp.path()).refresh().unwrap(),
        None
    );
    let url = format!("file://{}", empty.display());
    let mut remote = GitSource::open(&url, None, None, &tmp.path().join("state"), MAX).unwrap();
    assert_eq!(remote.refresh().unwrap(), None);
    // An unreachable remote is an error of refresh, not of open.
    let gone = format!("file://{}", tmp.path().join("gone.git").display());
    let mut unreachable =
        GitSource::open(&gone, None, None, &tmp.path().join("state"), MAX).unwrap();
    let err = unreachable.refresh().unwrap_err().to_string();
    assert!(err.contains("gone.git"), "{err}");

    assert!(
        GitSource::open(
            tmp.path().join("missing").to_str().unwrap(),
            None,
            None,
            tmp.path(),
            MAX
        )
        .is_err()
    );
    assert!(
        GitSource::open(
            repo.to_str().unwrap(),
            Some("bad..name"),
            None,
            tmp.path(),
            MAX
        )
        .is_err()
    );
}

#[test]
fn a_remote_clone_recovers_from_locks_a_killed_fetch_left() {
    let tmp = TempDir::new().unwrap();
    let (bare, clone) = bare_and_clone(&tmp);
    write(&clone, "a.yaml", "one\n");
    let one = commit_all(&clone, "one");
    git(&clone, &["push", "-q", "origin", "main"]);
    let url = format!("file://{}", bare.display());
    let state = tmp.path().join("state");
    let mut source = GitSource::open(&url, Some("main"), None, &state, MAX).unwrap();
    assert_eq!(source.refresh().unwrap(), Some(one));
    let dir = source.git_dir().to_path_buf();
    drop(source);

    // What a SIGKILL during a fetch or a write can leave: git never breaks a lock itself.
    let locks = [
        dir.join("refs/remotes/origin/main.lock"),
        dir.join("packed-refs.lock"),
        dir.join("HEAD.lock"),
    ];
    for lock in &locks {
        std::fs::write(lock, "").unwrap();
    }
    write(&clone, "a.yaml", "two\n");
    let two = commit_all(&clone, "two");
    git(&clone, &["push", "-q", "origin", "main"]);
    let mut source = GitSource::open(&url, Some("main"), None, &state, MAX).unwrap();
    assert_eq!(source.refresh().unwrap(), Some(two));
    for lock in &locks {
        assert!(!lock.exists(), "{} removed", lock.display());
    }
}

#[test]
fn locks_in_a_local_repository_are_left_alone() {
    let tmp = TempDir::new().unwrap();
    let repo = work_repo(&tmp, "local");
    write(&repo, "a.yaml", "one\n");
    commit_all(&repo, "one");
    // Another git process may hold this one: tend does not own a local repository.
    let lock = repo.join(".git/refs/heads/other.lock");
    std::fs::write(&lock, "").unwrap();
    let mut source = open(&repo, None, None, &tmp.path().join("state"));
    assert!(source.refresh().unwrap().is_some());
    assert!(lock.exists());
}
