#!/usr/bin/env bash
# build-image.sh DIR — a Debian 12 arm64 VM (kernel 6.1, systemd, cgroup v2 controllers,
# io_uring) for `make vm-test`, built once into DIR and cached there.
#
# Adapted from the workplace's verified builder (shared/tools/arm64vm): mmdebstrap makes
# DIR/rootfs (minbase + kernel + systemd + the runtime libraries the package depends on),
# emulating arm64 through qemu-user-static's binfmt entry. Takes 13 min on a machine with
# fast process spawns and ~33 on one with slow ones (the initramfs is built under
# emulation). The image is only a root tree: run-in-vm.sh makes a fresh ext4 from it for
# every run, so a run never changes the cache.
#
# DIR/packages records what the image holds; vm-test.sh rebuilds when the list changes.
# Needs root, mmdebstrap, qemu-user-static, binfmt-support, and Debian's mirror (apt's
# configured one): this is the one step of `make vm-test` that downloads.
set -euo pipefail
dir=${1:?usage: build-image.sh DIR}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pkgs=$(grep -v '^#' "$here/image-packages" | tr '\n' ' ' | xargs)
mkdir -p "$dir"
rm -rf "$dir/rootfs.new" "$dir/packages"
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
# A registration without the F flag (qemu-user-binfmt's) resolves its interpreter inside the
# chroot, where it does not exist: "chroot: failed to run command 'dpkg'". Drop it and
# register qemu-user-static's (F: the kernel opens the static interpreter once, here).
if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null; then
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && echo -1 > /proc/sys/fs/binfmt_misc/qemu-aarch64
  grep -m1 '^:' /usr/lib/binfmt.d/qemu-aarch64.conf > /proc/sys/fs/binfmt_misc/register
fi
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
  echo "build-image: qemu-aarch64's binfmt entry lacks the F flag (apt-get install qemu-user-static)" >&2
  exit 1
}
mmdebstrap --arch=arm64 --variant=minbase --include="$(echo "$pkgs" | tr ' ' ',')" \
  --customize-hook='chroot "$1" passwd -d root' --customize-hook='echo vm > "$1/etc/hostname"' \
  bookworm "$dir/rootfs.new"
rm -rf "$dir/rootfs"
mv "$dir/rootfs.new" "$dir/rootfs"
echo "$pkgs" > "$dir/packages"
