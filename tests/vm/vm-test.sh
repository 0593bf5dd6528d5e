#!/usr/bin/env bash
# vm-test.sh [--have-image] [DEB UPGRADE_DEB] — cardnode on a real arm64 kernel: boots the Debian 12 arm64 VM
# (qemu-system-aarch64; kernel 6.1, systemd, cgroup v2 controllers, io_uring), installs the
# arm64 package there, runs guest-checks.sh against its systemd units, and the cross-built
# unit tests that need a real kernel. Fails on any failed check or test.
#
#   (no flag)     builds the cached image first if it is missing or its package list
#                 changed (build-image.sh: 13-33 min, downloads from Debian's mirror)
#   --have-image  only answers: exit 0 when a usable cached image exists, else 1 (`make test`
#                 runs vm-test only then, so a fresh machine does not spend half an hour on it)
#
# Environment: VM_DIR (the cache, default /var/cache/cardnode/arm64vm, outside the checkout
# so that clones share it), VM_TIMEOUT_S (one guest run, default 1500).
# DEB and UPGRADE_DEB: the arm64 package and a higher revision of it (the Makefile's vm-test
# target builds both, and the cross build, and names them exactly). Output:
# build/vm-test/result.log (the guest's report) and build/vm-test/console.log (its console).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
vm_dir=${VM_DIR:-/var/cache/cardnode/arm64vm}

have_image() {
  local want
  want=$(grep -v '^#' "$here/image-packages" | tr '\n' ' ' | xargs)
  [ -f "$vm_dir/packages" ] && [ "$(cat "$vm_dir/packages")" = "$want" ] &&
    ls "$vm_dir"/rootfs/boot/vmlinuz-* >/dev/null 2>&1
}
if [ "${1:-}" = --have-image ]; then
  have_image
  exit
fi
if ! have_image; then
  echo "vm-test: building the arm64 VM image into $vm_dir (once; 13-33 min)"
  "$here/build-image.sh" "$vm_dir"
fi

out=$root/build/vm-test
payload=$out/payload
rm -rf "$out"
mkdir -p "$payload/deb/upgrade" "$payload/build/runtime" "$payload/build/storage"
deb=${1:-}
twin=${2:-}
[ -f "$deb" ] && [ -f "$twin" ] || {
  echo "vm-test: usage: vm-test.sh ARM64_DEB UPGRADE_DEB (make vm-test builds and names them)" >&2
  exit 2
}
cp "$deb" "$payload/deb/"
cp "$twin" "$payload/deb/upgrade/"
cross=$root/build/cross-aarch64
for t in runtime/isolation_test runtime/executor_test storage/io_engine_test storage/wal_test; do
  cp "$cross/$t" "$payload/build/$t"
done
echo "$cross" > "$payload/build-path"
# Shared libraries a test binary links that the image lacks (the image holds what the
# package needs): the same Debian 12 builds, from the cross sysroot, in /opt/payload/lib.
mkdir -p "$payload/lib"
for t in "$payload"/build/*/*; do
  for so in $(aarch64-linux-gnu-readelf -d "$t" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
    [ -n "$(find "$vm_dir/rootfs/lib/aarch64-linux-gnu" "$vm_dir/rootfs/usr/lib/aarch64-linux-gnu" \
      -maxdepth 1 -name "$so" 2>/dev/null | head -n1)" ] && continue
    lib=$(find "$root/build/sysroot-aarch64/usr/lib/aarch64-linux-gnu" "$root/build/sysroot-aarch64/lib/aarch64-linux-gnu" \
      -maxdepth 1 -name "$so" 2>/dev/null | head -n1)
    [ -n "$lib" ] || { echo "vm-test: $t needs $so, in neither the image nor the sysroot" >&2; exit 1; }
    cp -L "$lib" "$payload/lib/"
  done
done

start=$(date +%s)
CONSOLE_LOG=$out/console.log "$here/run-in-vm.sh" "$vm_dir" "$payload" "$here/guest-checks.sh" \
  "${VM_TIMEOUT_S:-1500}" > "$out/result.log" || true
secs=$(($(date +%s) - start))

# The report: every check, then the unit tests. What makes it fail is stated, one line each.
grep -E '^(=== |PASS |FAIL |UNIT |\[  FAILED  \])' "$out/result.log" || true
problems=()
grep -q '^=== CNVM end' "$out/result.log" || problems+=("the guest did not finish (see $out/result.log, $out/console.log)")
grep -q '^FAIL ' "$out/result.log" && problems+=("$(grep -c '^FAIL ' "$out/result.log") guest check(s) failed")
for t in isolation_test executor_test io_engine_test wal_test; do
  grep -qE "^UNIT [a-z]+/$t: rc=0 " "$out/result.log" || problems+=("unit test $t did not pass in the guest")
done
grep -q '^exit 0$' "$out/result.log" || problems+=("the guest script did not exit 0")
echo "vm-test: guest run took $secs s; full report: $out/result.log"
if [ ${#problems[@]} -gt 0 ]; then
  printf 'vm-test: FAILED: %s\n' "${problems[@]}" >&2
  exit 1
fi
echo "vm-test: passed"
