//! `--images DIR`: images shipped as files. Two formats, told by their contents:
//!
//! - `docker save` (and `skopeo copy ... docker-archive:FILE:web:v1`): `manifest.json`, a
//!   list of `{Config, RepoTags, Layers}` with paths inside the archive; layers are plain
//!   tars. The store is given an OCI manifest built from it.
//! - OCI image layout archives (`skopeo copy ... oci-archive:FILE:docker.io/library/web:v1`):
//!   `index.json` whose manifests carry `org.opencontainers.image.ref.name` (a full
//!   reference), blobs under `blobs/sha256/<hex>`.
//!
//! Parsing is pure ([`parse_docker_manifest`], [`parse_oci_index`]); [`read_archive`] reads
//! a (possibly gzipped) tar into memory.

use super::{ImageError, ImageRef};
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// The annotation of an OCI index entry that names the image.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// One image in a `docker save` archive.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DockerEntry {
    /// Path of the config JSON inside the archive.
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars inside the archive, lowest first.
    #[serde(rename = "Layers", default)]
    pub layers: Vec<String>,
}

/// The entries of a `docker save` `manifest.json`.
pub fn parse_docker_manifest(bytes: &[u8]) -> Result<Vec<DockerEntry>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("manifest.json: {e}"))
}

/// `(reference, manifest digest)` for each entry of an OCI `index.json` that has a
/// `org.opencontainers.image.ref.name`; entries without one are unnamed and left out.
pub fn parse_oci_index(bytes: &[u8]) -> Result<Vec<(ImageRef, String)>, String> {
    #[derive(Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        digest: String,
        #[serde(default)]
        annotations: HashMap<String, String>,
    }
    let index: Index = serde_json::from_slice(bytes).map_err(|e| format!("index.json: {e}"))?;
    let mut out = Vec::new();
    for m in index.manifests {
        if let Some(name) = m.annotations.get(REF_NAME) {
            let r = ImageRef::parse(name).map_err(|e| format!("index.json: {e}"))?;
            out.push((r, m.digest));
        }
    }
    Ok(out)
}

/// The files of a tar archive (gzipped or not), by path without a leading `./`.
pub fn read_archive(path: &Path) -> Result<HashMap<String, Vec<u8>>, ImageError> {
    let err = |message: String| ImageError::Archive {
        path: path.to_path_buf(),
        message,
    };
    let data = std::fs::read(path).map_err(ImageError::io(path))?;
    let reader: Box<dyn Read> = if data.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(std::io::Cursor::new(data)))
    } else {
        Box::new(std::io::Cursor::new(data))
    };
    let mut archive = tar::Archive::new(reader);
    let mut files = HashMap::new();
    for entry in archive
        .entries()
        .map_err(|e| err(format!("not a tar: {e}")))?
    {
        let mut entry = entry.map_err(|e| err(format!("reading tar: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| err(format!("entry path: {e}")))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut bytes = Vec::new();
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| err(format!("{name}: {e}")))?;
        files.insert(name, bytes);
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifest() {
        let e = parse_docker_manifest(
            br#"[{"Config":"abc.json","RepoTags":["web:v1","host:5000/web:v2"],"Layers":["l1/layer.tar","l2.tar"]}]"#,
        )
        .expect("parses");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].config, "abc.json");
        assert_eq!(
            e[0].repo_tags.as_deref(),
            Some(&["web:v1".to_string(), "host:5000/web:v2".to_string()][..])
        );
        assert_eq!(e[0].layers, ["l1/layer.tar", "l2.tar"]);
        let untagged = parse_docker_manifest(br#"[{"Config":"c","RepoTags":null,"Layers":[]}]"#)
            .expect("parses");
        assert_eq!(untagged[0].repo_tags, None);
        assert!(parse_docker_manifest(b"{}").is_err());
    }

    #[test]
    fn oci_index() {
        let d = format!("sha256:{}", "b".repeat(64));
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":1,
              "annotations":{{"org.opencontainers.image.ref.name":"docker.io/library/web:v1"}}}},
            {{"digest":"{d}","size":1}}]}}"#
        );
        let refs = parse_oci_index(json.as_bytes()).expect("parses");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].0.to_string(), "docker.io/library/web:v1");
        assert_eq!(refs[0].1, d);
        assert!(parse_oci_index(b"[").is_err());
    }
}
