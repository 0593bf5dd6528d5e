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
# Environment: JOBS (build parallelism, default nproc); CARDNODE_BUILD_TARGETS (build
# only these targets, e.g. `cardnode` for `make deb`; default: everything).
# Extra arguments after the action go to cmake's configure step, e.g.
#   cross/cross.sh armhf build -DCMAKE_CXX_FLAGS=-Wno-psabi
# (they stay in build/cross-ARCH's cache, as cmake -D values do).
#
# The tests run with CARDNODE_IO_BACKEND unset: qemu-user does not implement
# io_uring_setup (ENOSYS), so storage runs its fallback backend there and the
# io_uring-parameterised tests skip themselves. io_uring itself is covered by the
# native suite and on real boards.
set -euo pipefail

usage() {
  echo "usage: $0 aarch64|armhf build|test [CMAKE_ARG...]" >&2
  exit 2
}
[ $# -ge 2 ] || usage
arch=$1
action=$2
shift 2
extra_cmake_args=("$@")
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
    "${extra_cmake_args[@]}"
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    return 1
  fi
}

# Unit tests may exec target binaries of their own, and a
# process under qemu-user execs natively: the kernel runs an ARM program only through
# binfmt_misc and qemu-user-static's entry (F flag: the static interpreter is opened once,
# at registration, so it runs in chroots too). That qemu gets no -L; it looks for the
# target's loader and libraries in /etc/qemu-binfmt/<arch>, Debian's default
# QEMU_LD_PREFIX (the executor gives tasks a clean environment, so the variable itself
# would not reach it). Both are host-wide settings: this registers only the one binfmt
# entry it needs, and points /etc/qemu-binfmt/<arch> at our sysroot only when it is
# missing or already one of ours.
setup_exec_emulation() {
  local qarch=${qemu#qemu-}
  local entry=/proc/sys/fs/binfmt_misc/qemu-$qarch
  local conf=/usr/lib/binfmt.d/qemu-$qarch.conf
  local prefix=/etc/qemu-binfmt/$qarch
  local why=""
  if [ ! -e "$entry" ]; then
    if [ ! -f "$conf" ]; then
      why="$conf missing (apt-get install qemu-user-static)"
    elif [ ! -e /proc/sys/fs/binfmt_misc/register ] &&
      ! as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; then
      why="cannot mount binfmt_misc (needs root)"
    elif ! grep -m1 '^:' "$conf" | as_root tee /proc/sys/fs/binfmt_misc/register >/dev/null; then
      why="cannot register $conf with binfmt_misc (needs root)"
    fi
  fi
  if [ -z "$why" ]; then
    if [ -L "$prefix" ] || [ ! -e "$prefix" ]; then
      local current
      current=$(readlink "$prefix" 2>/dev/null || true)
      if [ "$current" != "$sysroot" ]; then
        if [ -z "$current" ] || [ -f "$current/.cardnode-sysroot" ] || [ ! -e "$current" ]; then
          as_root mkdir -p /etc/qemu-binfmt && as_root ln -sfn "$sysroot" "$prefix" ||
            why="cannot point $prefix at $sysroot (needs root)"
        else
          echo "cross.sh: note: $prefix -> $current (not ours, left alone)" >&2
        fi
      fi
    else
      echo "cross.sh: note: $prefix is not a symlink (left alone)" >&2
    fi
  fi
  if [ -n "$why" ]; then
    echo "cross.sh: WARNING: target programs exec'd by tests cannot run: $why;" \
      "tests that exec a target binary will fail" >&2
  fi
}

run_tests() {
  setup_exec_emulation
  # --no-tests=error: a tree where no test binary registered anything is a failure,
  # not a silent green.
  # CARDNODE_TEST_EMULATOR tells tests they run under qemu-user, which cannot emulate
  # some things (io_uring: ENOSYS; setrlimit(RLIMIT_AS) is accepted and ignored).
  (cd "$bdir" && env -u CARDNODE_IO_BACKEND CARDNODE_TEST_EMULATOR="$qemu" \
    ctest -L unit --output-on-failure -j2 --timeout 300 --no-tests=error)
}

phase sysroot "$here/sysroot.sh" "$arch" "$sysroot"
phase configure configure
targets=()
for t in ${CARDNODE_BUILD_TARGETS:-}; do targets+=(--target "$t"); done
if [ "$action" = test ] && [ ${#targets[@]} -gt 0 ]; then
  echo "cross.sh: CARDNODE_BUILD_TARGETS is for build, not test (tests need every target)" >&2
  exit 2
fi
phase build cmake --build "$bdir" -j "$jobs" "${targets[@]}"
if [ "$action" = test ]; then
  phase test run_tests
fi

echo "== cross[$arch] $action done:"
printf '   %s\n' "${report[@]}"
