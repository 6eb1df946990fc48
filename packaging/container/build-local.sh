#!/usr/bin/env bash
# Builds the runtime image of packaging/container/Containerfile from a
# locally built binary, with buildah, without pulling any base image: the
# Containerfile's `build` stage (which needs the Rust image) is replaced by a
# directory laid out by rootfs.sh, and its runtime stage (`FROM scratch`,
# user, env, volume, stop signal, health check) is built as written.
#
#   packaging/container/build-local.sh [--binary BIN] [--tag NAME] [--archive FILE]
#                                      [--storage-root DIR --storage-runroot DIR]
#
#   --binary BIN     the binary to ship (default: dist/sysdeploy from
#                    packaging/build-release.sh); one that still carries
#                    its debug info is split first (the image ships it stripped)
#   --tag NAME       image name (default: localhost/sysdeploy:<version>)
#   --archive FILE   also write the image as a docker-archive tarball
#                    (`podman load -i FILE`, `docker load -i FILE`)
#   --storage-root DIR, --storage-runroot DIR
#                    buildah's image store (default: buildah's own)
#
# Storage driver vfs and chroot isolation unless STORAGE_DRIVER /
# BUILDAH_ISOLATION say otherwise: both work without kernel overlay support
# or a container runtime. Needs buildah (Debian: apt-get install buildah),
# ldd, readelf, objcopy and strip; run as root or under `buildah unshare`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bin="$repo/dist/sysdeploy"
tag=""
archive=""
global=()
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=${2:?"--binary needs a path"}; shift 2 ;;
    --tag) tag=${2:?"--tag needs an image name"}; shift 2 ;;
    --archive) archive=${2:?"--archive needs a file name"}; shift 2 ;;
    --storage-root) global+=(--root "${2:?"--storage-root needs a directory"}"); shift 2 ;;
    --storage-runroot) global+=(--runroot "${2:?"--storage-runroot needs a directory"}"); shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-local.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for tool in buildah ldd readelf; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-local.sh: '$tool' is not installed (Debian: apt-get install buildah binutils)" >&2; exit 2; }
done
if [ ! -f "$bin" ]; then
  echo "build-local.sh: binary '$bin' does not exist; build it with packaging/build-release.sh or pass --binary PATH" >&2
  exit 2
fi
# Given as flags, not only env: buildah 1.28 reads an image store written
# with one form inconsistently with the other.
global+=(--storage-driver "${STORAGE_DRIVER:-vfs}")
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! readelf -S -W "$bin" | grep -q ' \.gnu_debuglink '; then
  "$repo/packaging/build-release.sh" --split "$bin" --out "$work/dist" >/dev/null
  bin="$work/dist/sysdeploy"
fi
version=$("$bin" --version | awk '{ print $2 }')
[ -n "$version" ] || { echo "build-local.sh: '$bin --version' printed no version" >&2; exit 2; }
tag=${tag:-localhost/sysdeploy:$version}

mkdir -p "$work/build"
"$here/rootfs.sh" "$bin" "$work/build/rootfs"
# `--build-context build=DIR` stands in for the stage named build, which is
# then unused and skipped; --pull=never makes sure nothing is fetched.
buildah "${global[@]}" build \
  --format docker \
  --pull=never \
  --skip-unused-stages=true \
  --build-context "build=$work/build" \
  --label "org.opencontainers.image.version=$version" \
  -f "$here/Containerfile" \
  -t "$tag" \
  "$work/build" >&2
if [ -n "$archive" ]; then
  rm -f "$archive"
  buildah "${global[@]}" push "$tag" "docker-archive:$archive:$tag" >&2
fi
echo "$tag"
