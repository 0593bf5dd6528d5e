#!/bin/sh
# build-deb.sh ARCH BINARY VERSION OUTDIR [RUNNER...] — build OUTDIR/cardnode_VERSION_ARCH.deb
# from a cardnode binary already built for ARCH (amd64, arm64 or armhf), with dpkg-deb
# alone: no debian/ source tree, no debhelper; what dh would generate is written out in
# this directory (postinst, prerm, postrm). `make deb` runs it; deploy/README.md lists
# what the package holds and why.
#
# RUNNER runs BINARY for the man page (`RUNNER BINARY --help`): empty for a native binary,
# e.g. `qemu-aarch64 -L SYSROOT` for an arm64 one.
# Environment: STRIP (default strip; the cross one for ARM), SOURCE_DATE_EPOCH (file
# times, changelog and man page date; default: the last commit's time).
set -eu
[ $# -ge 4 ] || { echo "usage: $0 ARCH BINARY VERSION OUTDIR [RUNNER...]" >&2; exit 2; }
arch=$1 binary=$2 version=$3 outdir=$4
shift 4
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
root=$(dirname "$deploy")
case "$arch" in
	amd64 | arm64 | armhf) ;;
	*) echo "build-deb.sh: unknown ARCH '$arch' (amd64, arm64 or armhf)" >&2; exit 2 ;;
esac
[ -x "$binary" ] || { echo "build-deb.sh: no binary at $binary (build it first)" >&2; exit 1; }
case "$version" in
	*-*) ;;
	*) echo "build-deb.sh: VERSION '$version' needs a Debian revision (0.1.0-1)" >&2; exit 2 ;;
esac
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH=$epoch
maintainer="cardnode maintainers <maintainers@users.noreply.r-seed-d22424f8.example>"

mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
stage=$(mktemp -d "$outdir/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
pkg=$stage/cardnode
umask 022

# Depends from the binary's NEEDED sonames through deps.map (a soname it lacks fails the
# build), in map order, each package once.
needed=$(LC_ALL=C readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
# Loaded at run time, so not NEEDED: OpenSSL (net/openssl.h, kOpenSslLibrary). The binary
# must name that soname, so a change there cannot leave the package without its library.
dlopened=libssl.so.3
grep -qaF "$dlopened" "$binary" || { echo "build-deb.sh: $binary does not name $dlopened (net/openssl.h changed? change it here and in deps.map)" >&2; exit 1; }
needed="$needed $dlopened"
depends=""
for so in $needed; do
	dep=$(awk -v so="$so" '$1 == so { $1 = ""; sub(/^ +/, ""); print; exit }' "$here/deps.map")
	[ -n "$dep" ] || { echo "build-deb.sh: $binary needs $so, which deploy/deb/deps.map does not map to a package" >&2; exit 1; }
	case ", $depends, " in *", $dep, "*) ;; *) depends=${depends:+$depends, }$dep ;; esac
done
# adduser: the postinst's way to create the task user where systemd-sysusers is missing.
depends="$depends, adduser"

# The binary, stripped the way dh_strip does it.
install -D -m 0755 "$binary" "$pkg/usr/bin/cardnode"
"${STRIP:-strip}" --remove-section=.comment --remove-section=.note --strip-unneeded "$pkg/usr/bin/cardnode"

install -D -m 0644 "$deploy/cardnode-server.service" "$pkg/lib/systemd/system/cardnode-server.service"
install -D -m 0644 "$deploy/cardnode-agent.service" "$pkg/lib/systemd/system/cardnode-agent.service"
install -D -m 0644 "$here/cardnode-server.default" "$pkg/etc/default/cardnode-server"
install -D -m 0644 "$here/cardnode-agent.default" "$pkg/etc/default/cardnode-agent"
install -D -m 0644 "$here/cardnode.sysusers" "$pkg/usr/lib/sysusers.d/cardnode.conf"
install -D -m 0644 "$deploy/cardnode.bash-completion" "$pkg/usr/share/bash-completion/completions/cardnode"
install -D -m 0644 "$here/lintian-overrides" "$pkg/usr/share/lintian/overrides/cardnode"

date=$(date -u -d "@$epoch" +%Y-%m-%d)
mkdir -p "$pkg/usr/share/man/man1"
"$here/manpage.sh" "$date" "$@" "$binary" > "$stage/cardnode.1"
gzip -9n < "$stage/cardnode.1" > "$pkg/usr/share/man/man1/cardnode.1.gz"

doc=$pkg/usr/share/doc/cardnode
install -D -m 0644 "$here/copyright" "$doc/copyright"
# Docs as dh_compress leaves them: above 4 KiB gzipped; the examples as they are, so they
# can be copied into place (deploy/README.md, "Prometheus").
for f in README.md:README.md deploy/README.md:README.deploy.md docs/CLI.md:CLI.md docs/GUARANTEES.md:GUARANTEES.md; do
	install -m 0644 "$root/${f%%:*}" "$doc/${f#*:}"
	[ "$(stat -c %s "$doc/${f#*:}")" -le 4096 ] || gzip -9n "$doc/${f#*:}"
done
for f in prometheus.yml alerts.yml alerts_test.yml grafana-dashboard.json example-job.json; do
	install -D -m 0644 "$deploy/$f" "$doc/examples/$f"
done
{
	echo "cardnode ($version) bookworm; urgency=medium"
	echo
	echo "  * Built with \`make deb\` from the cardnode tree at commit"
	echo "    $(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)."
	echo
	echo " -- $maintainer  $(LC_ALL=C date -u -R -d "@$epoch")"
} | gzip -9n > "$doc/changelog.Debian.gz"

mkdir -p "$pkg/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "$here/$s" "$pkg/DEBIAN/$s"; done
printf '/etc/default/cardnode-agent\n/etc/default/cardnode-server\n' > "$pkg/DEBIAN/conffiles"
chmod 0644 "$pkg/DEBIAN/conffiles"
size_kib=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat > "$pkg/DEBIAN/control" <<CONTROL
Package: cardnode
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size_kib
Depends: $depends
Section: admin
Priority: optional
Description: pool a few ARM boards into one batch compute cluster
 cardnode turns a handful of card-sized boards (Raspberry Pi 3/4/5, Zero 2 W,
 Orange Pi, Rock Pi) into one pool: jobs submitted from the command line run
 as plain processes under cgroup limits on whichever board has room, with
 their output kept, surviving a board or the coordinator dying, and every
 board exposing Prometheus metrics.
 .
 One binary plays every role. This package enables and starts the
 coordinator (cardnode-server.service, which runs tasks on its own board too)
 and installs the executor for the other boards (cardnode-agent.service)
 disabled, to be enabled once it knows the coordinator's address and token.
CONTROL
(cd "$pkg" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
	xargs -0 md5sum > DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/md5sums"
find "$pkg" -exec touch -h -d "@$epoch" {} +

deb=$outdir/cardnode_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
# lintian: any error or warning not in lintian-overrides fails the build (and leaves no .deb).
if command -v lintian >/dev/null; then
	lintian --fail-on error,warning "$deb" 2>/dev/null || { rm -f "$deb"; echo "build-deb.sh: lintian failed" >&2; exit 1; }
else
	echo "build-deb.sh: note: lintian is not installed (make deb installs it); not checked" >&2
fi
echo "$deb"
