//! The directory source against real files: content-hash revisions, deltas, refusals and the
//! debounced watch.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tend::source::dir::DirSource;
use tend::source::{FileState, Source};

const MAX: usize = 1 << 20;

fn write(dir: &Path, rel: &str, content: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn present(content: &str) -> FileState {
    FileState::Present(content.as_bytes().to_vec())
}

fn fill(dir: &Path) {
    write(dir, "a.yaml", "a\n");
    write(dir, "sub/b.yml", "b\n");
    write(dir, "notes.md", "not yaml\n");
    write(dir, ".git/config.yaml", "hidden\n");
    write(dir, ".hidden.yaml", "hidden\n");
}

#[test]
fn content_hash_is_stable_and_follows_content() {
    let one = TempDir::new().unwrap();
    let two = TempDir::new().unwrap();
    fill(one.path());
    fill(two.path());
    let mut a = DirSource::open(one.path(), MAX).unwrap();
    let mut b = DirSource::open(two.path(), MAX).unwrap();
    let id = a.refresh().unwrap().unwrap();
    assert!(id.starts_with("sha256:") && id.len() == 7 + 64, "{id}");
    assert_eq!(a.refresh().unwrap().unwrap(), id, "same content, same id");
    assert_eq!(
        b.refresh().unwrap().unwrap(),
        id,
        "same content elsewhere, same id"
    );

    let files = a.files(&id, None).unwrap();
    assert!(files.complete);
    assert_eq!(
        files.files.keys().collect::<Vec<_>>(),
        ["a.yaml", "sub/b.yml"]
    );

    // Hidden and non-YAML files do not count.
    write(one.path(), ".git/other.yaml", "x\n");
    write(one.path(), "notes.md", "changed\n");
    assert_eq!(a.refresh().unwrap().unwrap(), id);
    // Content and names do.
    write(one.path(), "a.yaml", "a2\n");
    assert_ne!(a.refresh().unwrap().unwrap(), id);
    write(two.path(), "sub/b2.yml", "b\n");
    std::fs::remove_file(two.path().join("sub/b.yml")).unwrap();
    assert_ne!(b.refresh().unwrap().unwrap(), id);

    assert_eq!(a.describe(), format!("dir {}", one.path().display()));
}

#[test]
fn deltas_against_the_previous_scan() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    write(dir, "keep.yaml", "keep\n");
    write(dir, "change.yaml", "v1\n");
    write(dir, "remove.yaml", "bye\n");
    let mut source = DirSource::open(dir, MAX).unwrap();
    let first = source.refresh().unwrap().unwrap();
    let initial = source.revisions(None, &first).unwrap();
    assert_eq!(initial.len(), 1);
    assert_eq!(initial[0].message, "initial state");
    assert_eq!(initial[0].author, "tend <tend@localhost>");
    assert_eq!(initial[0].parent, None);

    write(dir, "change.yaml", "v2\n");
    std::fs::remove_file(dir.join("remove.yaml")).unwrap();
    write(dir, "new/added.yaml", "hi\n");
    let second = source.refresh().unwrap().unwrap();

    let delta = source.files(&second, Some(&first)).unwrap();
    assert!(!delta.complete);
    assert_eq!(delta.files.len(), 3);
    assert_eq!(delta.files["change.yaml"], present("v2\n"));
    assert_eq!(delta.files["remove.yaml"], FileState::Removed);
    assert_eq!(delta.files["new/added.yaml"], present("hi\n"));

    let revisions = source.revisions(Some(&first), &second).unwrap();
    assert_eq!(revisions.len(), 1);
    assert_eq!(revisions[0].id, second);
    assert_eq!(revisions[0].parent.as_deref(), Some(first.as_str()));
    assert_eq!(revisions[0].message, "directory change: 3 files changed");
    assert!(source.revisions(Some(&second), &second).unwrap().is_empty());

    // An unknown base (say, from before a restart) gives every file.
    let all = source.files(&second, Some("sha256:0000")).unwrap();
    assert!(all.complete);
    assert_eq!(all.files.len(), 3);
    assert!(source.files(&second, None).unwrap().complete);
    // A refresh without changes keeps the base.
    assert_eq!(source.refresh().unwrap().unwrap(), second);
    assert_eq!(source.files(&second, Some(&first)).unwrap().files.len(), 3);
    assert!(source.files("sha256:unknown", None).is_err());
}

#[test]
fn symlinks_names_and_sizes_are_checked() {
    let tmp = TempDir::new().unwrap();
    let outside = TempDir::new().unwrap();
    write(outside.path(), "secret.yaml", "secret\n");
    let dir = tmp.path().join("manifests");
    write(&dir, "real/app.yaml", "app\n");
    std::os::unix::fs::symlink("real/app.yaml", dir.join("inside.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret.yaml"), dir.join("outside.yaml"))
        .unwrap();
    std::os::unix::fs::symlink("../../../../../../etc/hostname", dir.join("up.yaml")).unwrap();
    write(&dir, "big.yaml", &"x".repeat(300));
    let bad_name = std::ffi::OsStr::from_bytes(b"bad-\xff.yaml");
    std::fs::write(dir.join(bad_name), "x\n").unwrap();

    let mut source = DirSource::open(&dir, 200).unwrap();
    let id = source.refresh().unwrap().unwrap();
    let files = source.files(&id, None).unwrap().files;
    assert_eq!(files["inside.yaml"], present("app\n"));
    assert_eq!(files["real/app.yaml"], present("app\n"));
    let outside_target = outside.path().join("secret.yaml").display().to_string();
    assert_eq!(
        files["outside.yaml"],
        FileState::Refused(format!("symlink to {outside_target} leaves the directory"))
    );
    assert!(
        matches!(&files["up.yaml"], FileState::Refused(_)),
        "{:?}",
        files["up.yaml"]
    );
    assert_eq!(
        files["big.yaml"],
        FileState::Refused("file is 300 bytes, over the limit of 200 bytes".into())
    );
    let bad = files
        .iter()
        .find(|(k, _)| k.starts_with("bad-"))
        .expect("non-UTF-8 name listed");
    assert_eq!(
        *bad.1,
        FileState::Refused("file name is not valid UTF-8".into())
    );
}

#[test]
fn unreadable_files_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = TempDir::new().unwrap();
    write(tmp.path(), "locked.yaml", "x\n");
    let path = tmp.path().join("locked.yaml");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    if std::fs::read(&path).is_ok() {
        eprintln!("running as root: permissions do not stop reads, nothing to test");
        return;
    }
    let mut source = DirSource::open(tmp.path(), MAX).unwrap();
    let id = source.refresh().unwrap().unwrap();
    let files = source.files(&id, None).unwrap().files;
    assert!(matches!(&files["locked.yaml"], FileState::Refused(r) if r.contains("ermission")));
}

#[tokio::test]
async fn a_burst_of_writes_is_reported_once_after_it_settles() {
    let tmp = TempDir::new().unwrap();
    let dir = tmp.path();
    write(dir, "a.yaml", "a\n");
    let mut source = DirSource::open(dir, MAX).unwrap();
    let first = source.refresh().unwrap().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let guard = source.watch(tx).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    // 20 writes, 15 ms apart: the files never settle for 100 ms until the last one.
    let start = Instant::now();
    for i in 0..20 {
        write(dir, &format!("burst/f{i}.yaml"), &format!("n: {i}\n"));
        std::thread::sleep(Duration::from_millis(15));
    }
    let burst = start.elapsed();
    tokio::time::timeout(Duration::from_secs(2), rx.recv())
        .await
        .expect("a notification")
        .unwrap();
    let reported = start.elapsed();
    assert!(
        reported >= burst,
        "reported at {reported:?}, before the burst ended at {burst:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        rx.try_recv().is_err(),
        "the burst was reported more than once"
    );

    let second = source.refresh().unwrap().unwrap();
    assert_ne!(first, second);
    assert_eq!(source.files(&second, Some(&first)).unwrap().files.len(), 20);

    // Changes under hidden directories are not changes.
    write(dir, ".git/objects/x", "x");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err());

    drop(guard);
    write(dir, "after.yaml", "x\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.try_recv().is_err(),
        "notified after the guard was dropped"
    );
}
