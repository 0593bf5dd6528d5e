#!/usr/bin/env bash
# run-in-vm.sh DIR PAYLOAD_DIR SCRIPT [TIMEOUT_S] — boots the arm64 VM built by
# build-image.sh, runs SCRIPT once as root after boot, powers off, and prints what SCRIPT
# wrote. Adapted from the workplace's verified shared/tools/arm64vm/run-in-vm.sh.
#
# PAYLOAD_DIR is copied to /opt/payload in the guest. The guest disk is a fresh ext4 made
# from a hard-linked copy of DIR/rootfs plus the payload, so the cached tree never changes
# (only new files are added to the copy; no linked file is written). SCRIPT's output goes to
# /root/result.log, read back from the disk image with debugfs (no mount, no network).
# The guest has no network (user-mode NIC, restrict=on).
#
# Lessons kept in the code: the guest cleans /tmp at boot (files live under /opt);
# serial-getty on ttyAMA0 hangs up other writers of the console (masked); qemu runs under
# a timeout so a hung guest ends the run.
set -euo pipefail
dir=${1:?usage: run-in-vm.sh DIR PAYLOAD_DIR SCRIPT [TIMEOUT_S]}
payload=${2:?}
script=${3:?}
limit=${4:-900}
# A work dir of its own next to the cache (hard links need the same file system), so two
# runs (two checkouts) do not meet; it goes at the end, all but the console log.
work=$(mktemp -d "$dir/run.XXXXXX")
console=${CONSOLE_LOG:-$dir/console.log}
trap 'rm -rf "$work"' EXIT
cp -al "$dir/rootfs" "$work/root"
r=$work/root
mkdir -p "$r/opt/payload"
cp -a "$payload/." "$r/opt/payload/"
install -m 0755 "$script" "$r/opt/payload/.run.sh"
rm -f "$r/etc/systemd/system/payload.service"
cat > "$r/etc/systemd/system/payload.service" <<'UNIT'
[Unit]
Description=run /opt/payload/.run.sh once, then power off
After=multi-user.target
[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/bash -c 'set -o pipefail; /opt/payload/.run.sh 2>&1 | tee /root/result.log > /dev/console; echo "exit $?" >> /root/result.log; sync'
ExecStartPost=/bin/systemctl --no-block poweroff
[Install]
WantedBy=multi-user.target
UNIT
mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/payload.service "$r/etc/systemd/system/multi-user.target.wants/payload.service"
ln -sfn /dev/null "$r/etc/systemd/system/serial-getty@ttyAMA0.service"
truncate -s 3G "$work/disk.ext4"
mke2fs -q -t ext4 -d "$r" "$work/disk.ext4"
k=$(ls "$r"/boot/vmlinuz-* | head -n1)
i=$(ls "$r"/boot/initrd.img-* | grep -v -e dpkg -e new | head -n1)
rc=0
timeout "$limit" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 2048 -nographic \
  -kernel "$k" -initrd "$i" -append "root=/dev/vda rw console=ttyAMA0 quiet" \
  -drive file="$work/disk.ext4",if=virtio,format=raw \
  -netdev user,id=n0,restrict=on -device virtio-net-device,netdev=n0 \
  </dev/null >"$console" 2>&1 || rc=$?
if [ "$rc" != 0 ]; then
  echo "run-in-vm: qemu ended with $rc (124: not powered off within $limit s); console: $console" >&2
fi
debugfs -R "cat /root/result.log" "$work/disk.ext4" 2>/dev/null
