//! The image store for real: an image built with umoci from busybox-static, served by
//! Debian's docker-registry on 127.0.0.1, pulled, unpacked, imported from archives; and
//! layers built here to check whiteouts, opaque dirs and escapes.
//!
//! Needs root, umoci, skopeo, docker-registry and /bin/busybox. Without them the tests print
//! why and pass, except under `CI`, where they fail.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tend::agent::image::store::sha256_digest;
use tend::agent::image::unpack::unpack_layer;
use tend::agent::image::{
    ImageError, ImageRef, ImageStore, OciRegistry, PullPolicy, RegistryAuth, RootfsMethod,
    prepare_rootfs, release_rootfs,
};

/// Whether the real tools are here; prints why not, or panics under CI.
fn have_tools() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for tool in ["umoci", "skopeo", "docker-registry"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/bin/busybox").exists() {
        missing.push("/bin/busybox (busybox-static)".to_string());
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and the image tests need: {}", missing.join(", "));
    }
    eprintln!("SKIPPED: the image tests need {}", missing.join(", "));
    false
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Builds `<w>/img` (OCI layout) with tags v1 (busybox, /www/index.html, entrypoint
/// httpd) and v2 (v1's layer plus one more).
fn build_image(w: &Path) -> PathBuf {
    let img = w.join("img");
    let ub = w.join("ub");
    run("umoci", &["init", "--layout", s(&img)]);
    run("umoci", &["new", "--image", &format!("{}:v1", s(&img))]);
    run(
        "umoci",
        &["unpack", "--image", &format!("{}:v1", s(&img)), s(&ub)],
    );
    let rootfs = ub.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir");
    std::fs::create_dir_all(rootfs.join("www")).expect("mkdir");
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("cp busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
    std::fs::write(rootfs.join("www/index.html"), "v1\n").expect("write");
    run(
        "umoci",
        &["repack", "--image", &format!("{}:v1", s(&img)), s(&ub)],
    );
    run(
        "umoci",
        &[
            "config",
            "--image",
            &format!("{}:v1", s(&img)),
            "--config.entrypoint",
            "/bin/httpd",
            "--config.cmd=-f",
            "--config.cmd=-p",
            "--config.cmd=80",
            "--config.workingdir=/www",
            "--config.exposedports=80/tcp",
            "--config.env=GREETING=hi",
        ],
    );
    let ub2 = w.join("ub2");
    run(
        "umoci",
        &["unpack", "--image", &format!("{}:v1", s(&img)), s(&ub2)],
    );
    std::fs::write(ub2.join("rootfs/www/index.html"), "v2\n").expect("write");
    run(
        "umoci",
        &["repack", "--image", &format!("{}:v2", s(&img)), s(&ub2)],
    );
    img
}

/// Debian's docker-registry on 127.0.0.1:<free port>, killed on drop.
struct RegistryProcess {
    child: Child,
    port: u16,
}

impl RegistryProcess {
    fn start(w: &Path) -> RegistryProcess {
        RegistryProcess::start_with(w, "")
    }

    /// With `extra` YAML appended to the registry's config (e.g. an `auth:` section).
    fn start_with(w: &Path, extra: &str) -> RegistryProcess {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = w.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n{extra}",
                s(&w.join("registry"))
            ),
        )
        .expect("write registry config");
        let child = Command::new("docker-registry")
            .args(["serve", s(&config)])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(w.join("registry.log")).expect("log"))
            .spawn()
            .expect("start docker-registry");
        let r = RegistryProcess { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Releases a prepared rootfs (unmounting an overlay) if the test fails before it does.
struct Unmount(Option<(tend::agent::image::PreparedRootfs, PathBuf)>);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Some((prepared, dir)) = self.0.take() {
            let _ = release_rootfs(&prepared, &dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_local_registry() {
    if !have_tools() {
        return;
    }
    let w = tempfile::Builder::new()
        .prefix(&format!("tend-image-pull-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir");
    let img = build_image(w.path());
    let registry = RegistryProcess::start(w.path());
    let host = format!("127.0.0.1:{}", registry.port);
    for tag in ["v1", "v2"] {
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                &format!("oci:{}:{tag}", s(&img)),
                &format!("docker://{host}/web:{tag}"),
            ],
        );
    }
    let state = w.path().join("state");
    let store = ImageStore::open(&state).expect("open store");
    let oci = OciRegistry::new(vec![host.clone()]);
    let auth = RegistryAuth::Anonymous;
    let v1 = ImageRef::parse(&format!("{host}/web:v1")).expect("ref");

    // Never, absent: a clear error, nothing fetched.
    let never = store.ensure(&oci, &v1, PullPolicy::Never, &auth).await;
    match never {
        Err(e @ ImageError::NeverPull(_)) => {
            assert!(e.to_string().contains("web:v1"), "{e}");
            assert!(e.to_string().contains("Never"), "{e}");
        }
        other => panic!("expected NeverPull, got {other:?}"),
    }

    let first = store
        .ensure(&oci, &v1, PullPolicy::IfNotPresent, &auth)
        .await
        .expect("pull v1");
    assert!(first.pulled);
    assert_eq!(first.fetched.len(), 2, "config and one layer: {first:?}");
    let image = &first.image;
    assert_eq!(image.config.entrypoint, ["/bin/httpd"]);
    assert_eq!(image.config.cmd, ["-f", "-p", "80"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/www"));
    assert_eq!(image.config.exposed_ports, ["80/tcp"]);
    assert!(image.config.env.iter().any(|e| e == "GREETING=hi"));
    for d in std::iter::once(&image.manifest_digest)
        .chain(std::iter::once(&image.config_digest))
        .chain(&image.layers)
    {
        let bytes = std::fs::read(store.blob_path(d).expect("path")).expect("blob");
        assert_eq!(&sha256_digest(&bytes), d, "stored under its digest");
    }
    let rootfs = store.rootfs(image).expect("unpack");
    assert!(rootfs.ends_with(image.config_digest.trim_start_matches("sha256:")));
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).expect("symlink kept"),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("www/index.html")).expect("index"),
        "v1\n"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(rootfs.join("bin/busybox"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "busybox stays executable: {mode:o}");

    // IfNotPresent with the image there: no pull.
    let again = store
        .ensure(&oci, &v1, PullPolicy::IfNotPresent, &auth)
        .await
        .expect("local");
    assert!(!again.pulled);
    assert_eq!(again.image, first.image);
    let never_present = store
        .ensure(&oci, &v1, PullPolicy::Never, &auth)
        .await
        .expect("local");
    assert!(!never_present.pulled);

    // A second tag sharing v1's layer fetches only what is new.
    let v2 = ImageRef::parse(&format!("{host}/web:v2")).expect("ref");
    let second = store
        .ensure(&oci, &v2, PullPolicy::Always, &auth)
        .await
        .expect("pull v2");
    assert!(second.reused.contains(&image.layers[0]), "{second:?}");
    assert_eq!(second.image.layers.len(), 2);
    assert!(!second.fetched.contains(&image.layers[0]));
    let rootfs2 = store.rootfs(&second.image).expect("unpack v2");
    assert_eq!(
        std::fs::read_to_string(rootfs2.join("www/index.html")).expect("index"),
        "v2\n"
    );

    // A container's writable rootfs: overlay when the kernel allows, else a copy.
    let container = w.path().join("containers/c1");
    let prepared = prepare_rootfs(&rootfs, &container).expect("prepare");
    let mut guard = Unmount(Some((prepared.clone(), container.clone())));
    match &prepared.method {
        RootfsMethod::Overlay => eprintln!("prepare_rootfs: overlayfs"),
        RootfsMethod::Copy { overlay_error } => {
            eprintln!("prepare_rootfs: recursive copy (overlay mount failed: {overlay_error})")
        }
    }
    assert!(prepared.path.join("bin/busybox").is_file());
    std::fs::write(prepared.path.join("www/index.html"), "changed\n").expect("writable");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("www/index.html")).expect("index"),
        "v1\n",
        "the image rootfs is not changed by the container"
    );
    guard.0 = None;
    release_rootfs(&prepared, &container).expect("release");
    assert!(!container.exists());

    // A blob corrupted on disk is refused when read again.
    let layer = store.blob_path(&image.layers[0]).expect("path");
    let mut bytes = std::fs::read(&layer).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&layer, &bytes).expect("corrupt");
    std::fs::remove_dir_all(&rootfs).expect("drop rootfs");
    match store.rootfs(image) {
        Err(ImageError::DigestMismatch { expected, .. }) => assert_eq!(expected, image.layers[0]),
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    // A blob written under the wrong digest is refused too.
    let wrong = store.write_blob(&image.config_digest, b"not the config");
    assert!(
        matches!(wrong, Err(ImageError::DigestMismatch { .. })),
        "{wrong:?}"
    );
    drop(registry);
}

#[test]
fn import_oci_and_docker_archives() {
    if !have_tools() {
        return;
    }
    let w = tempfile::Builder::new()
        .prefix(&format!("tend-image-import-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir");
    let img = build_image(w.path());
    for (kind, dest) in [
        ("oci", "oci-archive:{}:docker.io/library/web:v1"),
        ("docker", "docker-archive:{}:web:v1"),
    ] {
        let dir = w.path().join(format!("images-{kind}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let file = dir.join("web.tar");
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &format!("oci:{}:v1", s(&img)),
                &dest.replace("{}", s(&file)),
            ],
        );
        let store = ImageStore::open(&w.path().join(format!("state-{kind}"))).expect("store");
        let refs = store.import_dir(&dir).expect("import");
        let web = ImageRef::parse("web:v1").expect("ref");
        assert_eq!(refs, std::slice::from_ref(&web), "{kind}");
        let image = store.image(&web).expect("imported");
        assert_eq!(image.config.entrypoint, ["/bin/httpd"], "{kind}");
        let rootfs = store.rootfs(&image).expect("unpack");
        assert!(rootfs.join("bin/busybox").is_file(), "{kind}");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("www/index.html")).expect("index"),
            "v1\n"
        );
    }
}

/// A tar layer from `(path, kind)`; kind: "dir", "file:CONTENT", "link:TARGET",
/// "hard:TARGET". Paths are written raw, so `..` and `/abs` can be built.
fn layer(entries: &[(&str, &str)], gzip: bool) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, kind) in entries {
        let mut h = tar::Header::new_gnu();
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        let data: &[u8] = if let Some(content) = kind.strip_prefix("file:") {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            content.as_bytes()
        } else if let Some(target) = kind.strip_prefix("link:") {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_link_name(target).expect("link name");
            h.set_mode(0o777);
            b""
        } else if let Some(target) = kind.strip_prefix("hard:") {
            h.set_entry_type(tar::EntryType::Link);
            h.set_link_name(target).expect("link name");
            h.set_mode(0o644);
            b""
        } else {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            b""
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    let tar = b.into_inner().expect("tar");
    if gzip {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).expect("gzip");
        gz.finish().expect("gzip")
    } else {
        tar
    }
}

fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tend-image-{what}-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir")
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let w = tempdir("whiteout");
    let root = w.path();
    let lower = layer(
        &[
            ("etc/", "dir"),
            ("etc/keep", "file:keep"),
            ("etc/gone", "file:gone"),
            ("data/", "dir"),
            ("data/old1", "file:1"),
            ("data/sub/", "dir"),
            ("data/sub/old2", "file:2"),
            ("bin/", "dir"),
            ("bin/tool", "file:tool"),
            ("bin/alias", "link:tool"),
            ("bin/twin", "hard:bin/tool"),
        ],
        true,
    );
    let upper = layer(
        &[
            ("etc/.wh.gone", "file:"),
            ("data/", "dir"),
            ("data/.wh..wh..opq", "file:"),
            ("data/new", "file:new"),
            ("etc/added", "file:added"),
        ],
        false,
    );
    unpack_layer(root, "lower", &lower).expect("lower (gzip)");
    unpack_layer(root, "upper", &upper).expect("upper (plain tar)");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keep")).expect("keep"),
        "keep"
    );
    assert!(!root.join("etc/gone").exists(), "whiteout removes");
    assert!(
        !root.join("etc/.wh.gone").exists(),
        "whiteout files are not unpacked"
    );
    assert!(root.join("etc/added").is_file());
    assert!(
        !root.join("data/old1").exists(),
        "opaque dir hides lower files"
    );
    assert!(
        !root.join("data/sub").exists(),
        "opaque dir hides lower dirs"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("data/new")).expect("new"),
        "new"
    );
    assert!(!root.join("data/.wh..wh..opq").exists());
    assert_eq!(
        std::fs::read_link(root.join("bin/alias")).expect("symlink"),
        Path::new("tool")
    );
    use std::os::unix::fs::MetadataExt;
    let tool = std::fs::metadata(root.join("bin/tool")).expect("tool");
    let twin = std::fs::metadata(root.join("bin/twin")).expect("twin");
    assert_eq!(tool.ino(), twin.ino(), "hardlink kept");
    assert_eq!(tool.mode() & 0o777, 0o644, "mode kept");
}

#[test]
fn escaping_entries_are_refused() {
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        ("dotdot", vec![("../evil", "file:x")]),
        ("absolute", vec![("/evil", "file:x")]),
        (
            "symlink",
            vec![("out", "link:/tmp"), ("out/evil", "file:x")],
        ),
        ("hardlink", vec![("evil", "hard:../../etc/passwd")]),
    ];
    for (name, entries) in cases {
        let w = tempdir(&format!("escape-{name}"));
        let root = w.path().join("root");
        std::fs::create_dir_all(&root).expect("mkdir");
        let result = unpack_layer(&root, name, &layer(&entries, false));
        assert!(
            matches!(result, Err(ImageError::UnsafeEntry { .. })),
            "{name}: {result:?}"
        );
        assert!(!w.path().join("evil").exists(), "{name}");
        assert!(!Path::new("/tmp/evil").exists() || name != "symlink");
    }
}

/// A registry that wants basic auth (htpasswd): anonymous pulls are refused with a clear
/// error; the credentials of a Docker `config.json` for that registry pull, through the
/// agent's `StoreImages` as `tend agent --registry-config` wires it.
#[test]
fn pull_with_basic_auth_from_a_docker_config() {
    if !have_tools() {
        return;
    }
    let htpasswd_found = Command::new("htpasswd")
        .arg("-h")
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !htpasswd_found {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and htpasswd (apache2-utils) is missing");
        }
        eprintln!("SKIPPED: htpasswd (apache2-utils) is missing");
        return;
    }
    let w = tempfile::Builder::new()
        .prefix(&format!("tend-image-auth-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir");
    let img = build_image(w.path());
    let htpasswd = w.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbn", "lab", "s3cret"])
        .output()
        .expect("htpasswd");
    std::fs::write(&htpasswd, &out.stdout).expect("htpasswd file");
    let registry = RegistryProcess::start_with(
        w.path(),
        &format!(
            "auth: {{htpasswd: {{realm: tend-lab, path: {}}}}}\n",
            s(&htpasswd)
        ),
    );
    let host = format!("127.0.0.1:{}", registry.port);
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            "lab:s3cret",
            &format!("oci:{}:v1", s(&img)),
            &format!("docker://{host}/private/web:v1"),
        ],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let images = |config: Option<PathBuf>, state: &str| tend::agent::pods::StoreImages {
        store: ImageStore::open(&w.path().join(state)).expect("store"),
        registry: OciRegistry::new(vec![host.clone()]),
        docker_config: config,
        handle: runtime.handle().clone(),
    };
    use tend::agent::pods::Images;
    let image = format!("{host}/private/web:v1");

    let anonymous = images(None, "anon").ensure(&image, Some("Always"));
    let err = anonymous.expect_err("anonymous pull refused").to_string();
    assert!(err.contains("private/web:v1"), "{err}");
    assert!(
        err.to_lowercase().contains("authorized") || err.contains("401"),
        "{err}"
    );

    let config = w.path().join("config.json");
    let wrong = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "lab:wrong");
    std::fs::write(
        &config,
        format!(r#"{{"auths": {{"{host}": {{"auth": "{wrong}"}}}}}}"#),
    )
    .expect("config.json");
    assert!(
        images(Some(config.clone()), "wrong")
            .ensure(&image, Some("Always"))
            .is_err(),
        "wrong password refused"
    );
    let right = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "lab:s3cret");
    std::fs::write(
        &config,
        format!(r#"{{"auths": {{"http://{host}": {{"auth": "{right}"}}}}}}"#),
    )
    .expect("config.json");
    let ready = images(Some(config), "right")
        .ensure(&image, Some("Always"))
        .expect("pull with the config's credentials");
    assert!(ready.pulled);
    assert!(ready.image_id.contains("@sha256:"), "{}", ready.image_id);
    assert_eq!(
        ready.config.entrypoint.as_deref(),
        Some(&["/bin/httpd".to_string()][..])
    );
}
