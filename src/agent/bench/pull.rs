//! Figure 2: a 1 MB image pulled on loopback. Debian's `docker-registry` serves on
//! 127.0.0.1 and a free port; an image with one 1 MiB layer of random bytes is pushed with
//! oci-client; then the real [`ImageStore`] pulls it through the real [`OciRegistry`] into a
//! fresh store (and a fresh client, so each pull connects anew) `N` times.

use super::image::{BuiltImage, random_layer};
use super::{Lab, Report, summary};
use crate::agent::image::{ImageRef, ImageStore, OciRegistry, RegistryAuth};
use anyhow::{Context as _, bail};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes of random data in the layer.
pub const LAYER_BYTES: usize = 1 << 20;

/// Starts `docker-registry` on 127.0.0.1 and a free port (a child of the lab); its port.
fn start_registry(lab: &mut Lab) -> anyhow::Result<u16> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let config = lab.work.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: 127.0.0.1:{port}}}\n",
            lab.work.join("registry").display()
        ),
    )?;
    let log = std::fs::File::create(lab.work.join("registry.log"))?;
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting docker-registry")?;
    lab.children.push(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(lab.work.join("registry.log")).unwrap_or_default();
            bail!(
                "docker-registry did not listen on 127.0.0.1:{port} within 20 s: {}",
                log.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(port)
}

pub fn run(lab: &mut Lab, n: usize) -> anyhow::Result<Report> {
    let port = start_registry(lab)?;
    let host = format!("127.0.0.1:{port}");
    let image = BuiltImage::new(random_layer(LAYER_BYTES)?, &["/bin/true"])?;
    let size = (image.layer.len() + image.config.len() + image.manifest.len()) as f64;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    tokio.block_on(image.push(&host, "bench/random", "v1"))?;
    let reference = ImageRef::parse(&format!("{host}/bench/random:v1"))?;

    let mut pull_ms = Vec::new();
    let mut unpack_ms = Vec::new();
    for i in 0..n {
        let state = lab.work.join(format!("store-{i}"));
        let store = ImageStore::open(&state)?;
        let registry = OciRegistry::new(vec![host.clone()]);
        let started = Instant::now();
        let outcome = tokio
            .block_on(store.pull(&registry, &reference, &RegistryAuth::Anonymous))
            .with_context(|| format!("pulling {reference}"))?;
        pull_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if outcome.image.manifest_digest != image.manifest_digest() || outcome.fetched.len() != 2 {
            bail!(
                "pull {i} got {} fetching {:?}",
                outcome.image.manifest_digest,
                outcome.fetched
            );
        }
        let started = Instant::now();
        let rootfs = store.rootfs(&outcome.image)?;
        unpack_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        let unpacked = std::fs::metadata(rootfs.join("data/blob"))?.len();
        if unpacked != LAYER_BYTES as u64 {
            bail!("the unpacked layer holds {unpacked} bytes");
        }
        let _ = std::fs::remove_dir_all(&state);
    }

    let mut report = Report::default();
    let (min, median, p90) = summary(&pull_ms);
    report.info(
        "1 MiB image pull on loopback (median)",
        median,
        "ms",
        &format!(
            "{:.0} MiB/s; min {min:.1}, p90 {p90:.1}, of {n} into fresh stores; manifest, config, layer verified",
            size / 1048576.0 / (median / 1000.0)
        ),
    );
    let (_, median, _) = summary(&unpack_ms);
    report.info(
        "  then unpacking it into the image rootfs",
        median,
        "ms",
        "median; done once per image",
    );
    Ok(report)
}
