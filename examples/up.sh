#!/usr/bin/env bash
# Runs one example on this machine, offline, in one command:
#
#   sudo bash examples/up.sh EXAMPLE [tend up flags...]     e.g. seed-lab --labels disk=ssd
#
# 1. installs the tools tend needs when missing (Debian/Ubuntu: apt-get);
# 2. builds tend (cargo build --release), unless $TEND names a tend binary;
# 3. builds the example images from busybox-static (examples/images/build.sh);
# 4. copies examples/EXAMPLE into a fresh git repository (kept when it exists, with
#    your commits);
# 5. runs `tend up` on it in the foreground: control plane and one local node in one
#    process. Ctrl-C stops it and removes the pods, rules and mounts it made.
#
# Everything lives under $TEND_EXAMPLES (default /tmp/tend-examples)/EXAMPLE:
# repo/ (the git repository tend deploys), images/, state/. Start over with
# `rm -rf /tmp/tend-examples/EXAMPLE`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

say() { printf 'up.sh: %s\n' "$*" >&2; }
die() {
  say "$*"
  exit 2
}

[ $# -ge 1 ] || die "usage: sudo bash $0 EXAMPLE [tend up flags...] (EXAMPLE: seed-lab, nginx-demo, user-pay)"
example=$1
shift
case $example in
  */* | .* | images) die "$example: not an example; use one of seed-lab, nginx-demo, user-pay" ;;
esac
[ -d "$here/$example" ] || die "$here/$example: no such example"
[ "$(id -u)" -eq 0 ] || die "tend up runs containers with runc and programs nftables: run as root (sudo bash $0 $example)"

# 1. Tools: what the node needs (runc, nft, ip), git for the repository, and the
#    image builder's (umoci, skopeo, busybox-static).
need=()
for pair in runc:runc nft:nftables ip:iproute2 git:git umoci:umoci skopeo:skopeo curl:curl; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]}: install them with your package manager"
  say "installing ${need[*]} (apt-get)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# 2. tend itself.
if [ -n "${TEND:-}" ]; then
  tend=$TEND
else
  cargo=$(command -v cargo || true)
  if [ -z "$cargo" ] && [ -n "${SUDO_USER:-}" ]; then
    # sudo resets PATH; rustup puts cargo in the user's ~/.cargo/bin.
    home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
    if [ -x "$home/.cargo/bin/cargo" ]; then
      cargo=$home/.cargo/bin/cargo
      export RUSTUP_HOME=${RUSTUP_HOME:-$home/.rustup} CARGO_HOME=${CARGO_HOME:-$home/.cargo}
    fi
  fi
  [ -n "$cargo" ] || die "cargo is missing: install Rust (https://rustup.rs), or set TEND=/path/to/tend"
  say "building tend (cargo build --release; the first build takes a few minutes)"
  (cd "$root" && "$cargo" build --release --locked --quiet)
  tend=${CARGO_TARGET_DIR:-$root/target}/release/tend
fi
[ -x "$tend" ] || die "$tend: not an executable"

work=${TEND_EXAMPLES:-/tmp/tend-examples}/$example
mkdir -p "$work"

# 3. The images, as archives `tend up --images` imports.
say "building the example images into $work/images"
bash "$here/images/build.sh" "$work/images" >/dev/null

# 4. The repository: the example's files as its first commit.
repo=$work/repo
if [ -d "$repo/.git" ]; then
  say "reusing $repo and its commits (rm -rf $work to start over)"
else
  mkdir -p "$repo"
  find "$here/$example" -maxdepth 1 -type f \( -name '*.yaml' -o -name '*.yml' \) -exec cp {} "$repo/" \;
  git -C "$repo" init -q -b main
  git -C "$repo" config user.name "tend examples"
  git -C "$repo" config user.email "examples@tend.invalid"
  git -C "$repo" add -A
  git -C "$repo" commit -q -m "$example: first version"
fi

# 5. Run it, after saying what to try.
case $example in
  seed-lab)
    try='tend get pods -o wide
  curl 127.0.0.1:30123
  sed -i "s/web:v1/web:v2/" xgp-web.yaml && git commit -qam "xgp-web v2"
  tend rollout status deployment/xgp-web
  tend rollout history deployment/xgp-web
  tend rollout undo deployment/xgp-web --to-revision 1' ;;
  nginx-demo)
    try='tend get rs; tend get pods --show-labels; tend get svc
  sed -i "s/nginx:1.7.9/nginx:1.8/" nginx-deployment.yml && git commit -qam "nginx 1.8"
  tend rollout status deployment/nginx-deployment-demo
  tend rollout history deployment/nginx-deployment-demo
  tend rollout undo deployment/nginx-deployment-demo --to-revision 1' ;;
  *)
    try='tend get pods -o wide
  tend get services' ;;
esac
cat >&2 <<EOF

up.sh: $example runs until Ctrl-C. In another terminal, as root:

  export PATH=$(dirname "$tend"):\$PATH TEND_STATE=$work/state
  cd $repo
  $try

examples/$example/README.md shows the output to expect.

EOF
exec "$tend" up --repo "$repo" --state "$work/state" --images "$work/images" "$@"
