#!/usr/bin/env bash
# Builds the binary that packages and the container image ship: the release
# build with its debug info split off into a separate file.
#
#   packaging/build-release.sh [--out DIR]           cargo build --release, then split
#   packaging/build-release.sh --split BIN [--out DIR]   only split an already built BIN
#
# Writes DIR/sysdeploy (no debug sections, no symbol table, a .gnu_debuglink
# naming sysdeploy.debug with its CRC) and DIR/sysdeploy.debug (the line
# tables and symbols, compressed). DIR defaults to dist/ in the repository.
# gdb, addr2line and Rust's own backtraces find the debug file when it lies
# next to the binary, or as /usr/lib/debug/.build-id/xx/rest.debug (the
# binary's build id, `readelf -n`), where Debian's -dbgsym packages put it.
#
# Needs objcopy and strip (Debian: binutils). BIN is never modified.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out="$repo/dist"
bin=""
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=${2:?"--out needs a directory"}; shift 2 ;;
    --split) bin=${2:?"--split needs the path of a built binary"}; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-release.sh: unknown argument '$1' (expected --out DIR or --split BIN; see --help)" >&2; exit 2 ;;
  esac
done
for tool in objcopy strip; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-release.sh: '$tool' is not installed (Debian: apt-get install binutils)" >&2; exit 2; }
done

if [ -z "$bin" ]; then
  (cd "$repo" && cargo build --release --locked --bin sysdeploy)
  bin="$repo/target/release/sysdeploy"
fi
[ -f "$bin" ] || { echo "build-release.sh: binary '$bin' does not exist (expected a built sysdeploy)" >&2; exit 2; }

mkdir -p "$out"
# Work on temporary names beside the result, so a failure never leaves a
# binary whose debuglink names a debug file that does not match it.
tmp=$(mktemp -d "$out/.split.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
objcopy --only-keep-debug --compress-debug-sections=zlib "$bin" "$tmp/sysdeploy.debug"
# --strip-unneeded drops the symbol table too (it is in the debug file);
# the dynamic symbols the loader needs stay.
strip --strip-unneeded -o "$tmp/sysdeploy" "$bin"
# The link holds the debug file's name and CRC; run it from the directory of
# the debug file so the name recorded is the bare file name.
(cd "$tmp" && objcopy --add-gnu-debuglink=sysdeploy.debug sysdeploy)
chmod 0644 "$tmp/sysdeploy.debug"
chmod 0755 "$tmp/sysdeploy"
mv -f "$tmp/sysdeploy.debug" "$out/sysdeploy.debug"
mv -f "$tmp/sysdeploy" "$out/sysdeploy"
ls -l "$bin" "$out/sysdeploy" "$out/sysdeploy.debug" | awk '{ printf "%12d  %s\n", $5, $NF }'
