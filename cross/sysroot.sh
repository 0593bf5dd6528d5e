#!/usr/bin/env bash
# sysroot.sh ARCH DIR — a Debian 12 sysroot for cross-building cardnode.
#
# ARCH is aarch64 or armhf. DIR receives the target's headers and libraries: the
# -dev packages of the Makefile's DEPS, for the target architecture, unpacked (not
# installed: mmdebstrap's "extract" variant runs nothing from the target).
#
# Cached: DIR/.cardnode-sysroot holds the package list it was built from; a
# matching stamp skips the build (a second run costs nothing). A rebuild goes into
# a temporary directory beside DIR and is renamed into place, so an interrupted
# run never leaves a half-unpacked sysroot that looks complete.
#
# Environment: CARDNODE_DEBIAN_MIRROR — a mirror URI or sources.list file passed to
# mmdebstrap (default: mmdebstrap's, with bookworm-updates and bookworm-security).
set -euo pipefail

usage() {
  echo "usage: $0 aarch64|armhf DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
arch=$1
dir=$2
case "$arch" in
  aarch64) deb_arch=arm64 triplet=aarch64-linux-gnu ;;
  armhf) deb_arch=armhf triplet=arm-linux-gnueabihf ;;
  *)
    echo "sysroot.sh: unknown ARCH '$arch' (expected aarch64 or armhf)" >&2
    exit 2
    ;;
esac

suite=bookworm
# Every library the tree links, plus the C/C++ runtime to link against.
packages=libc6-dev,libstdc++-12-dev,libuv1-dev,liburing-dev,libprotobuf-dev
packages+=,libgtest-dev,libgmock-dev,libbenchmark-dev,libssl-dev,zlib1g-dev,libcli11-dev
packages+=,nlohmann-json3-dev
stamp_text="suite=$suite arch=$deb_arch packages=$packages"
stamp_name=.cardnode-sysroot

if [ -f "$dir/$stamp_name" ] && [ "$(cat "$dir/$stamp_name")" = "$stamp_text" ]; then
  echo "sysroot: $dir is up to date ($deb_arch)"
  exit 0
fi

command -v mmdebstrap >/dev/null || {
  echo "sysroot.sh: mmdebstrap not found (apt-get install mmdebstrap, or: make cross-deps)" >&2
  exit 1
}

mkdir -p "$(dirname "$dir")"
dir=$(cd "$(dirname "$dir")" && pwd)/$(basename "$dir")
tmp=$(mktemp -d "$dir.tmp.XXXXXX")
old=""
cleanup() {
  rm -rf "$tmp"
  [ -z "$old" ] || rm -rf "$old"
}
trap cleanup EXIT

# Serialise concurrent builders of the same DIR; the second finds the stamp.
exec 9>"$dir.lock"
flock 9
if [ -f "$dir/$stamp_name" ] && [ "$(cat "$dir/$stamp_name")" = "$stamp_text" ]; then
  echo "sysroot: $dir is up to date ($deb_arch)"
  exit 0
fi

echo "sysroot: building $deb_arch $suite sysroot in $dir"
mirror=()
[ -z "${CARDNODE_DEBIAN_MIRROR:-}" ] || mirror=("$CARDNODE_DEBIAN_MIRROR")
# The temp dir exists (mktemp) and is empty, which mmdebstrap accepts as a target.
debstrap() {
  rm -rf "$tmp" && mkdir "$tmp"
  mmdebstrap --quiet --variant=extract --arch="$deb_arch" --include="$packages" "$@" \
    "$suite" "$tmp" "${mirror[@]}" </dev/null
}
# A mirror caught mid-sync serves a security index whose size does not match its
# Release file, and apt refuses the whole update. The sysroot is only linked
# against (the boards bring their own, possibly newer, libraries of the same ABI),
# so one retry without the security suite is an acceptable degradation.
if ! debstrap; then
  echo "sysroot: retrying without the -security suite (index download failed)" >&2
  # shellcheck disable=SC2016 # $1 is mmdebstrap's, expanded by its hook shell
  debstrap --setup-hook='sed -i "/-security/d" "$1/etc/apt/sources.list"'
fi

# Debian's -dev symlinks point at absolute paths (usr/lib/T/libz.so -> /lib/T/libz.so.1),
# which the linker and CMake would resolve on the build host, not in the sysroot.
# Make every absolute link relative (dev/ links to /proc and is left alone); relative
# links keep working after the rename below and wherever the sysroot is moved.
fixed=0
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  rel=$(realpath -s -m --relative-to="$(dirname "$link")" "$tmp$target")
  ln -sfn "$rel" "$link"
  fixed=$((fixed + 1))
done < <(find "$tmp" -path "$tmp/dev" -prune -o -type l -lname '/*' -print0)
echo "sysroot: made $fixed absolute symlinks relative"

# Check the libraries CMake will look for are really there for the target.
for lib in libc.so libstdc++.so.6 libprotobuf.so libuv.so liburing.so libz.so libcrypto.so \
  libgtest.a libbenchmark.so; do
  found=$(find "$tmp/usr/lib/$triplet" "$tmp/lib/$triplet" -maxdepth 1 -name "$lib" 2>/dev/null | head -n1)
  if [ -z "$found" ] || [ ! -e "$found" ]; then
    echo "sysroot.sh: $lib missing or dangling in the new sysroot" >&2
    exit 1
  fi
done

printf '%s\n' "$stamp_text" >"$tmp/$stamp_name"
chmod 755 "$tmp"
if [ -e "$dir" ]; then
  old=$(mktemp -d "$dir.old.XXXXXX")
  mv -T "$dir" "$old/sysroot"
fi
mv -T "$tmp" "$dir"
echo "sysroot: ready: $dir"
