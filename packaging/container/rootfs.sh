#!/usr/bin/env bash
# Lays out the root file system of the sysdeploy runtime image in DIR: the
# binary, the shared libraries it links (as `ldd` lists them, at the same
# paths), passwd/group entries for the unprivileged user, the state
# directory and /tmp. Nothing else: no shell, no package manager.
#
#   packaging/container/rootfs.sh BIN DIR
#
# Both the Containerfile's build stage and build-local.sh use it, so the two
# images hold the same files. Run it as root (or under `buildah unshare`) so
# the state directory can belong to the service user; elsewhere it stays
# owned by the caller, and the Containerfile sets its owner when copying.
set -euo pipefail

bin=${1:?"usage: rootfs.sh BIN DIR (BIN: the sysdeploy binary to ship, DIR: an empty or absent directory)"}
dir=${2:?"usage: rootfs.sh BIN DIR (BIN: the sysdeploy binary to ship, DIR: an empty or absent directory)"}
# The service user; the same number is in the Containerfile's USER, in
# build-local.sh and in the operations guide (Kubernetes' runAsNonRoot needs
# a numeric uid to verify).
uid=10001
gid=10001

[ -f "$bin" ] || { echo "rootfs.sh: binary '$bin' does not exist" >&2; exit 2; }
if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
  echo "rootfs.sh: '$dir' is not empty (expected an empty or absent directory)" >&2
  exit 2
fi
command -v ldd >/dev/null 2>&1 || { echo "rootfs.sh: 'ldd' is not installed (Debian: libc-bin)" >&2; exit 2; }

mkdir -p "$dir/usr/bin" "$dir/etc/sysdeploy" "$dir/var/lib/sysdeploy" "$dir/tmp"
install -m 0755 "$bin" "$dir/usr/bin/sysdeploy"

# Every library the dynamic loader maps, and the loader itself, at the path
# `ldd` prints (the loader's own path is the binary's PT_INTERP).
libs=$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[ -n "$libs" ] || { echo "rootfs.sh: ldd lists no libraries for '$bin' (a static binary needs none; is it the right file?)" >&2; exit 2; }
for lib in $libs; do
  mkdir -p "$dir$(dirname "$lib")"
  cp -L "$lib" "$dir$lib"
  chmod 0755 "$dir$lib"
done

cat >"$dir/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/usr/sbin/nologin
sysdeploy:x:$uid:$gid:sysdeploy:/var/lib/sysdeploy:/usr/sbin/nologin
PASSWD
cat >"$dir/etc/group" <<GROUP
root:x:0:
sysdeploy:x:$gid:
GROUP
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$dir/etc/nsswitch.conf"
chmod 0644 "$dir/etc/passwd" "$dir/etc/group" "$dir/etc/nsswitch.conf"

chmod 1777 "$dir/tmp"
chmod 0700 "$dir/var/lib/sysdeploy"
if [ "$(id -u)" = 0 ]; then
  chown "$uid:$gid" "$dir/var/lib/sysdeploy"
fi
