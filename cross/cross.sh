#!/usr/bin/env bash
# cross.sh ARCH build|test — cross-build cardnode for an ARM board, and run its unit
# tests under qemu-user.
#
#   ARCH   aarch64 (Pi 3/4/5, Zero 2 W, 64-bit OS) or armhf (32-bit OS)
#   build  sysroot (cached) + configure + build everything, benchmarks included
#   test   build, then `ctest -L unit` with every test binary run by qemu
#
# Works from any directory. Outputs, relative to the checkout (or $CARDNODE_BUILD_ROOT):
#   build/sysroot-ARCH  Debian 12 headers and libraries of ARCH (cross/sysroot.sh)
#   build/cross-ARCH    the Release build tree
# Environment: JOBS (build parallelism, default nproc); CARDNODE_CROSS_CXXFLAGS (extra
# compiler flags for an experiment; passed on every configure, so never left stale).
#
# The tests run with CARDNODE_IO_BACKEND unset: qemu-user does not implement
# io_uring_setup (ENOSYS), so storage runs its fallback backend there and the
# io_uring-parameterised tests skip themselves. io_uring itself is covered by the
# native suite and on real boards.
set -euo pipefail

usage() {
  echo "usage: $0 aarch64|armhf build|test" >&2
  exit 2
}
[ $# -eq 2 ] || usage
arch=$1
action=$2
case "$arch" in
  aarch64) triplet=aarch64-linux-gnu qemu=qemu-aarch64 ;;
  armhf) triplet=arm-linux-gnueabihf qemu=qemu-arm ;;
  *)
    echo "cross.sh: unknown ARCH '$arch' (expected aarch64 or armhf)" >&2
    exit 2
    ;;
esac
case "$action" in
  build | test) ;;
  *)
    echo "cross.sh: unknown action '$action' (expected build or test)" >&2
    exit 2
    ;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
build_root=${CARDNODE_BUILD_ROOT:-$root/build}
mkdir -p "$build_root"
build_root=$(cd "$build_root" && pwd)
sysroot=$build_root/sysroot-$arch
bdir=$build_root/cross-$arch
jobs=${JOBS:-$(nproc)}

missing=()
for tool in "$triplet-gcc" "$triplet-g++" "$qemu" mmdebstrap cmake ninja protoc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross.sh: missing tools: ${missing[*]} (install them with: make deps cross-deps)" >&2
  exit 1
fi

now_ms() { date +%s%3N; }
report=()
# phase NAME CMD...: runs CMD, prints and records how long it took.
phase() {
  local name=$1
  shift
  local t0
  t0=$(now_ms)
  echo "== cross[$arch] $name"
  local rc=0
  "$@" || rc=$?
  local ms=$(($(now_ms) - t0))
  local line
  line=$(printf '%-10s %4d.%01d s' "$name" $((ms / 1000)) $((ms % 1000 / 100)))
  report+=("$line")
  if [ $rc -ne 0 ]; then
    echo "== cross[$arch] $line: FAILED (exit $rc)" >&2
    exit $rc
  fi
  echo "== cross[$arch] $line"
}

configure() {
  cmake -S "$root" -B "$bdir" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$here/toolchain-$arch.cmake" \
    -DCARDNODE_SYSROOT="$sysroot" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCARDNODE_BUILD_TESTS=ON \
    -DCARDNODE_BUILD_BENCH=ON \
    -DCMAKE_CXX_FLAGS="${CARDNODE_CROSS_CXXFLAGS:-}"
}

run_tests() {
  # --no-tests=error: a tree where no test binary registered anything is a failure,
  # not a silent green.
  (cd "$bdir" && env -u CARDNODE_IO_BACKEND \
    ctest -L unit --output-on-failure -j2 --timeout 300 --no-tests=error)
}

phase sysroot "$here/sysroot.sh" "$arch" "$sysroot"
phase configure configure
phase build cmake --build "$bdir" -j "$jobs"
if [ "$action" = test ]; then
  phase test run_tests
fi

echo "== cross[$arch] $action done:"
printf '   %s\n' "${report[@]}"
