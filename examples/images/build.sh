#!/usr/bin/env bash
# Builds the small images the examples use, offline, as docker-archive files
# (`manifest.json` with RepoTags) that `tend agent --images DIR` and
# `tend up --images DIR` import into the node's image store.
#
#   bash examples/images/build.sh OUT_DIR     build every image into OUT_DIR
#   bash examples/images/build.sh --list      print the image references, one a line
#
# Each image is busybox-static (from /bin/busybox, package busybox-static) with
# httpd on port 80 serving a page that names the image (`web v1`) at `/` and the
# pod's hostname at `/cgi-bin/hostname`. Its entrypoint is a small shell that
# stops httpd on SIGTERM, so a rollout does not wait for the 30 s grace period
# (httpd as PID 1 would ignore SIGTERM).
#
# Needs umoci and skopeo (Debian: apt-get install umoci skopeo busybox-static);
# no network, no registry, no Docker. Run as root, or as a user (umoci --rootless).
# Idempotent: every run rebuilds each archive in a scratch directory and then
# replaces OUT_DIR/<name>_<tag>.tar, leaving other files in OUT_DIR alone.
set -euo pipefail

# The images: "REFERENCE|PAGE". tests/examples.rs checks that these are exactly
# the images the examples' YAML references.
IMAGES=(
  "web:v1|web v1"
  "web:v2|web v2"
  "web:v3|web v3"
  "nginx:1.7.9|nginx 1.7.9"
  "nginx:1.8|nginx 1.8"
  "nginx:user-v1|user v1"
  "nginx:pay-v1|pay v1"
)

BUSYBOX=${BUSYBOX:-/bin/busybox}

die() {
  printf 'build.sh: %s\n' "$*" >&2
  exit 2
}

usage() {
  printf 'usage: bash %s OUT_DIR | --list\n' "$0" >&2
  exit 2
}

[ $# -eq 1 ] || usage
case $1 in
  --list)
    for entry in "${IMAGES[@]}"; do printf '%s\n' "${entry%%|*}"; done
    exit 0
    ;;
  -h | --help) usage ;;
  -*) usage ;;
esac
out=$1

missing=()
for tool in umoci skopeo; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]} (Debian: apt-get install ${missing[*]})"
[ -x "$BUSYBOX" ] || die "$BUSYBOX is missing (Debian: apt-get install busybox-static)"
# A dynamically linked busybox would not run in an image without its libraries.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" >/dev/null 2>&1; then
  die "$BUSYBOX is linked dynamically; the images need a static one (Debian: apt-get install busybox-static)"
fi
"$BUSYBOX" --list >/dev/null 2>&1 || die "$BUSYBOX --list failed: is it busybox?"

rootless=()
[ "$(id -u)" -eq 0 ] || rootless=(--rootless)

mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/tend-images.XXXXXX")
trap 'rm -rf "$work"' EXIT

layout="$work/layout"
umoci init --layout "$layout"

n=0
for entry in "${IMAGES[@]}"; do
  ref=${entry%%|*}
  page=${entry#*|}
  n=$((n + 1))
  tag="$layout:img$n"
  bundle="$work/bundle$n"
  umoci new --image "$tag"
  umoci unpack "${rootless[@]}" --image "$tag" "$bundle" >/dev/null
  rootfs="$bundle/rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/www/cgi-bin" "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  cp "$BUSYBOX" "$rootfs/bin/busybox"
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
  done
  printf '%s\n' "$page" >"$rootfs/www/index.html"
  printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\nhostname\n' >"$rootfs/www/cgi-bin/hostname"
  chmod 0755 "$rootfs/www/cgi-bin/hostname"
  # PID 1 ignores SIGTERM unless it handles it: stop httpd and leave.
  cat >"$rootfs/bin/serve" <<'EOF'
#!/bin/sh
httpd -f -p 80 -h /www &
pid=$!
trap 'kill "$pid"; exit 0' TERM INT
wait "$pid"
EOF
  chmod 0755 "$rootfs/bin/serve"
  printf 'root:x:0:0:root:/:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\n' >"$rootfs/etc/group"
  umoci repack --image "$tag" "$bundle"
  umoci config --image "$tag" \
    --config.entrypoint /bin/serve \
    --config.exposedports 80/tcp \
    --config.label "org.opencontainers.image.title=$ref"
  archive="$out/$(printf '%s' "$ref" | tr '/:' '__').tar"
  rm -f "$archive.tmp"
  skopeo copy --quiet "oci:$tag" "docker-archive:$archive.tmp:$ref"
  mv -f "$archive.tmp" "$archive"
  printf '%s\t%s\n' "$ref" "$archive"
done
