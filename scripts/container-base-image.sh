#!/usr/bin/env bash
# Builds a local stand-in for the official node:*-bookworm-slim image, for machines that have podman but
# no container registry (CI sandboxes, air-gapped hosts): a minimal Debian rootfs made with debootstrap
# from Debian's own mirror, plus this host's node binary, npm, node headers (for node-gyp) and CA bundle,
# and a `node` user with uid/gid 1000 as the official image has. Imported with `podman import`.
#
#   scripts/container-base-image.sh [--warm] [IMAGE]   default IMAGE: localhost/node-base:test
#   FORCE=1 scripts/container-base-image.sh             rebuild even if the image exists
#
#   --warm  also build the Dockerfile's build stage on it (system packages, npm ci, native addon), so
#           the next `podman build` of the image, e.g. by test/container.test.ts, reuses those layers
#           and only compiles the sources (CI setup: scripts/install-test-deps.sh).
#
# Then: podman build --build-arg NODE_IMAGE=localhost/node-base:test ... (see docs/operations.md).
# Needs root (debootstrap), podman, debootstrap and an apt mirror (the host's, from its apt sources).
set -euo pipefail

WARM=0
if [[ "${1:-}" == --warm ]]; then
  WARM=1
  shift
fi
IMAGE="${1:-localhost/node-base:test}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PODMAN_FLAGS=(--runtime runc --ulimit nofile=20000:20000 --ulimit nproc=1000:1000)

warm() {
  [[ "$WARM" == 1 ]] || return 0
  echo "container-base-image: warming the build stage of $ROOT/Dockerfile on $IMAGE" >&2
  podman build "${PODMAN_FLAGS[@]}" --network host --format docker --target build \
    --build-arg "NODE_IMAGE=$IMAGE" --file "$ROOT/Dockerfile" "$ROOT" >/dev/null
}

if [[ "${FORCE:-0}" != 1 ]] && podman image exists "$IMAGE"; then
  echo "container-base-image: $IMAGE already exists (FORCE=1 to rebuild)" >&2
  warm
  exit 0
fi

for tool in podman debootstrap node npm; do
  command -v "$tool" >/dev/null || { echo "container-base-image: $tool is not installed" >&2; exit 2; }
done

# The host's Debian release and mirror: the node binary is linked against this libc.
SUITE="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
MIRROR="${DEBIAN_MIRROR:-}"
if [[ -z "$MIRROR" && -f /etc/apt/sources.list.d/debian.sources ]]; then
  MIRROR="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
fi
if [[ -z "$MIRROR" && -f /etc/apt/sources.list ]]; then
  MIRROR="$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

NODE_BIN="$(node -p 'process.execPath')"
NODE_PREFIX="$(dirname "$(dirname "$NODE_BIN")")"
NPM_DIR="$(cd "$(dirname "$(readlink -f "$(command -v npm)")")/.." && pwd)"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/node-base-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT

echo "container-base-image: debootstrap $SUITE from $MIRROR" >&2
debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || {
  tail -n 30 "$ROOTFS.log" >&2
  rm -f "$ROOTFS.log"
  exit 1
}
rm -f "$ROOTFS.log"

# Same layout as the official image: /usr/local/{bin,lib/node_modules,include/node}.
install -D -m 0755 "$NODE_BIN" "$ROOTFS/usr/local/bin/node"
mkdir -p "$ROOTFS/usr/local/lib/node_modules"
cp -a "$NPM_DIR" "$ROOTFS/usr/local/lib/node_modules/npm"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$ROOTFS/usr/local/bin/npm"
ln -sf ../lib/node_modules/npm/bin/npx-cli.js "$ROOTFS/usr/local/bin/npx"
if [[ -d "$NODE_PREFIX/include/node" ]]; then
  mkdir -p "$ROOTFS/usr/local/include"
  cp -a "$NODE_PREFIX/include/node" "$ROOTFS/usr/local/include/node"
fi

# The host's node must run inside the rootfs (a statically linked-enough build such as nodejs.org's or
# NodeSource's; Debian's own nodejs package links libnode and other shared libraries minbase lacks).
if ! chroot "$ROOTFS" /usr/local/bin/node --version >/dev/null 2>&1; then
  echo "container-base-image: $NODE_BIN does not run in a minimal Debian rootfs; it needs:" >&2
  ldd "$NODE_BIN" >&2 || true
  exit 1
fi

# The host's CA bundle: the registry may be reached through a TLS-inspecting proxy.
if [[ -f "$CA_BUNDLE" ]]; then
  install -D -m 0644 "$CA_BUNDLE" "$ROOTFS$CA_BUNDLE"
fi

# A `node` user and group (uid/gid 1000), written directly: minbase has no useradd.
grep -q '^node:' "$ROOTFS/etc/group" || echo 'node:x:1000:' >>"$ROOTFS/etc/group"
grep -q '^node:' "$ROOTFS/etc/passwd" || echo 'node:x:1000:1000::/home/node:/bin/sh' >>"$ROOTFS/etc/passwd"
grep -q '^node:' "$ROOTFS/etc/shadow" || echo 'node:*:19000:0:99999:7:::' >>"$ROOTFS/etc/shadow"
install -d -o 1000 -g 1000 -m 0755 "$ROOTFS/home/node"

# Keep it small, as the slim image is: no package cache, no package lists.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
  "$ROOTFS"/usr/share/man/*

tar -C "$ROOTFS" -c . | podman import --quiet \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "ENV npm_config_cafile=$CA_BUNDLE" \
  --change 'CMD ["node"]' \
  - "$IMAGE" >/dev/null
echo "container-base-image: built $IMAGE (node $(node --version), Debian $SUITE)" >&2
warm
