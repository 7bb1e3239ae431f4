//! Test images built offline from busybox-static with umoci and skopeo, shared by the
//! real-node tests (tests/up.rs, tests/crash.rs). Included with `#[path]`, next to tools.rs.

use super::tools::{run, s};
use std::path::Path;

/// Busybox images serving `web <version>` at `/` and the pod's hostname at
/// `/cgi-bin/hostname` on port 80, as docker archives `<name>:<version>` in `<dir>/`
/// (`web-<version>.tar`), for `--images`.
pub fn build_images(work: &Path, dir: &Path, name: &str, versions: &[&str]) {
    let img = work.join("img");
    run("umoci", &["init", "--layout", s(&img)]);
    std::fs::create_dir_all(dir).expect("images dir");
    for version in versions {
        let tag = format!("{}:{version}", s(&img));
        let ub = work.join(format!("ub-{version}"));
        run("umoci", &["new", "--image", &tag]);
        run("umoci", &["unpack", "--image", &tag, s(&ub)]);
        let rootfs = ub.join("rootfs");
        for d in ["bin", "www/cgi-bin", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("busybox");
        run(
            "chroot",
            &[s(&rootfs), "/bin/busybox", "--install", "-s", "/bin"],
        );
        std::fs::write(rootfs.join("www/index.html"), format!("web {version}\n")).expect("page");
        let cgi = rootfs.join("www/cgi-bin/hostname");
        std::fs::write(
            &cgi,
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhostname\n",
        )
        .expect("cgi");
        run("chmod", &["0755", s(&cgi)]);
        run("umoci", &["repack", "--image", &tag, s(&ub)]);
        run(
            "umoci",
            &[
                "config",
                "--image",
                &tag,
                "--config.entrypoint",
                "/bin/httpd",
                "--config.cmd=-f",
                "--config.cmd=-p",
                "--config.cmd=80",
                "--config.cmd=-h",
                "--config.cmd=/www",
            ],
        );
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &format!("oci:{tag}"),
                &format!(
                    "docker-archive:{}:{name}:{version}",
                    s(&dir.join(format!("web-{version}.tar")))
                ),
            ],
        );
    }
}
