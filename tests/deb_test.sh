#!/bin/bash
# deb_test.sh OLD.deb NEW.deb [OTHER_ARCH.deb...] — test the cardnode packages (make deb-test).
#
# Every package: lintian (any error or warning not overridden fails), its contents and
# control data, its Depends against the binary's NEEDED libraries. OLD and NEW (this
# machine's architecture, NEW a higher version of the same tree) also go through a real
# install, upgrade, remove and purge with dpkg, in a throwaway root: an overlay whose lower
# layer is this machine's / and whose upper layer is a tmpfs, in a private mount
# namespace, with empty /run (so no systemd is reachable and nothing starts). The host's
# files, users, dpkg database and services are not changed.
#
# Needs root, unshare and overlayfs for the install cycle: without them it says SKIP and
# checks the packages only. Exit 0 = passed (or skipped), 1 = a check failed.
set -euo pipefail

if [ "${1:-}" = --inside ]; then
	inside=1
	shift
else
	inside=0
fi
[ $# -ge 2 ] || { echo "usage: $0 OLD.deb NEW.deb [OTHER_ARCH.deb...]" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root_dir=$(dirname "$here")
failures=0
fail() { echo "deb_test: FAIL: $*" >&2; failures=$((failures + 1)); }
pass() { echo "deb_test: ok: $*"; }
# check DESCRIPTION CMD...: CMD must succeed.
check() {
	local what=$1
	shift
	if "$@"; then pass "$what"; else fail "$what"; fi
}

# ---- the install cycle, inside the private mount namespace -------------------------------
if [ $inside = 1 ]; then
	old=$1 new=$2
	tmp=$(mktemp -d /tmp/cardnode-deb-test.XXXXXX)
	mount -t tmpfs cardnode-deb-test "$tmp"
	mkdir "$tmp/upper" "$tmp/work" "$tmp/root"
	r=$tmp/root
	mount -t overlay overlay -o "lowerdir=/,upperdir=$tmp/upper,workdir=$tmp/work" "$r"
	mount --rbind /proc "$r/proc" && mount --rbind /sys "$r/sys" && mount --rbind /dev "$r/dev"
	# Empty /run: no /run/systemd/system, so the maintainer scripts act as on a machine not
	# booted with systemd (symlinks only); nothing of the host's systemd is reachable.
	mount -t tmpfs run "$r/run"
	mount -t tmpfs tmp "$r/tmp"
	cp "$old" "$r/tmp/old.deb"
	cp "$new" "$r/tmp/new.deb"
	in_root() { chroot "$r" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C "$@"; }
	ver() { in_root dpkg-query -W -f '${Version} ${db:Status-Status}' cardnode 2>/dev/null || true; }
	old_ver=$(dpkg-deb -f "$old" Version)
	new_ver=$(dpkg-deb -f "$new" Version)
	# A machine that has cardnode already gets it purged in the overlay first.
	[ -z "$(ver)" ] || in_root dpkg --purge cardnode >/dev/null

	wants=$r/etc/systemd/system/multi-user.target.wants
	echo "deb_test: dpkg -i $(basename "$old")"
	check "install succeeds" in_root dpkg -i /tmp/old.deb
	check "installed: $old_ver" test "$(ver)" = "$old_ver installed"
	user=$(in_root getent passwd cardnode-task || true)
	check "user cardnode-task exists" test -n "$user"
	IFS=: read -r _ _ uid _ _ home shell <<<"$user"
	check "cardnode-task is a system user (uid $uid)" test "${uid:-1000}" -lt 1000
	check "cardnode-task has no login shell ($shell)" test "$shell" = /usr/sbin/nologin
	check "cardnode-task has no home ($home)" test ! -e "$r$home"
	check "/var/lib/cardnode is root's, 0700" test "$(stat -c '%a %U' "$r/var/lib/cardnode")" = "700 root"
	check "server unit enabled" test "$(readlink "$wants/cardnode-server.service")" = /lib/systemd/system/cardnode-server.service
	check "agent unit not enabled" test ! -e "$wants/cardnode-agent.service" -a ! -L "$wants/cardnode-agent.service"
	check "/etc/default files present" test -f "$r/etc/default/cardnode-server" -a -f "$r/etc/default/cardnode-agent"
	check "cardnode --version runs" test "$(in_root cardnode --version)" = "cardnode ${old_ver%%-*}"
	check "man cardnode finds the page" in_root man -w cardnode
	if in_root sh -c 'command -v systemd-analyze' >/dev/null; then
		check "systemd-analyze verify: both units" in_root systemd-analyze verify \
			cardnode-server.service cardnode-agent.service
	else
		echo "deb_test: note: no systemd-analyze here; units not verified"
	fi
	conffiles=$(in_root dpkg-query -W -f '${Conffiles}' cardnode | awk '{print $1}' | sort | tr '\n' ' ')
	check "conffiles: the two /etc/default files" \
		test "$conffiles" = "/etc/default/cardnode-agent /etc/default/cardnode-server "

	# State a running pool would have, an edited conffile, and the agent-board choice
	# deploy/README.md describes (server disabled, agent enabled): an upgrade keeps all.
	sd=$r/var/lib/cardnode
	mkdir -p "$sd/wal" "$sd/snapshots" "$sd/logs/1"
	head -c 65536 /dev/urandom > "$sd/wal/00000000000000000001.wal"
	head -c 4096 /dev/urandom > "$sd/snapshots/00000000000000000007.snap"
	echo "frame 3" > "$sd/logs/1/3.out"
	head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$sd/token"
	chmod 0600 "$sd/token"
	state() { (cd "$sd" && find . -printf '%p %m %U %s\n' | sort && find . -type f -exec sha256sum {} + | sort); }
	before=$(state)
	echo 'CARDNODE_SERVER_OPTS="--no-exec"  # edited by deb_test' >> "$r/etc/default/cardnode-server"
	printf 'CARDNODE_JOIN=pi-1.local:7420\n' >> "$r/etc/default/cardnode-agent"
	in_root systemctl disable cardnode-server.service >/dev/null 2>&1
	in_root systemctl enable cardnode-agent.service >/dev/null 2>&1
	check "(setup) admin's choice: agent enabled, server disabled" \
		test -L "$wants/cardnode-agent.service" -a ! -e "$wants/cardnode-server.service"

	echo "deb_test: dpkg -i $(basename "$new") (upgrade)"
	check "upgrade succeeds without a prompt" in_root dpkg -i /tmp/new.deb </dev/null
	check "installed: $new_ver" test "$(ver)" = "$new_ver installed"
	check "state dir unchanged (WAL, snapshot, logs, token: bytes, modes, owners)" test "$(state)" = "$before"
	check "/var/lib/cardnode still 0700" test "$(stat -c %a "$sd")" = 700
	check "edited conffiles kept" grep -q 'edited by deb_test' "$r/etc/default/cardnode-server"
	check "agent's join kept" grep -q '^CARDNODE_JOIN=pi-1.local:7420' "$r/etc/default/cardnode-agent"
	check "upgrade keeps the agent enabled" test -L "$wants/cardnode-agent.service"
	check "upgrade does not re-enable the server" test ! -e "$wants/cardnode-server.service"
	check "user still there" in_root getent passwd cardnode-task

	echo "deb_test: dpkg -r cardnode"
	check "remove succeeds" in_root dpkg -r cardnode
	check "status: config-files" test "$(ver)" = "$new_ver config-files"
	check "binary gone" test ! -e "$r/usr/bin/cardnode"
	check "units gone" test ! -e "$r/lib/systemd/system/cardnode-server.service" -a ! -e "$r/lib/systemd/system/cardnode-agent.service"
	check "conffiles kept (edits too)" grep -q 'edited by deb_test' "$r/etc/default/cardnode-server"
	check "state dir kept" test "$(state)" = "$before"

	echo "deb_test: dpkg -P cardnode"
	check "purge succeeds" in_root dpkg -P cardnode
	check "status: not installed" test -z "$(ver)" -o "$(ver)" = " not-installed"
	check "/etc/default files gone" test ! -e "$r/etc/default/cardnode-server" -a ! -e "$r/etc/default/cardnode-agent"
	check "/var/lib/cardnode gone" test ! -e "$sd"
	left=$(cd "$r" && find etc/systemd var/lib/systemd -name '*cardnode*' 2>/dev/null || true)
	check "no unit symlinks or deb-systemd-helper state left${left:+: $left}" test -z "$left"
	check "user kept after purge (Debian keeps system users)" in_root getent passwd cardnode-task

	# Remove the install right after install (no upgrade), then purge from config-files:
	# the path most users take.
	check "install again" in_root dpkg -i /tmp/new.deb
	check "purge straight from installed" in_root dpkg -P cardnode
	check "... leaves no /var/lib/cardnode" test ! -e "$sd"
	exit $((failures > 0))
fi

# ---- outside: every package's contents, then the cycle in a namespace -------------------
old=$(realpath "$1") new=$(realpath "$2")
shift 2
others=("$@")
host_arch=$(dpkg --print-architecture)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

check_package() {
	local deb=$1 arch ver x=$work/x-$(basename "$1")
	echo "deb_test: == $(basename "$deb")"
	arch=$(dpkg-deb -f "$deb" Architecture)
	ver=$(dpkg-deb -f "$deb" Version)
	case "$(basename "$deb")" in
		"cardnode_${ver}_$arch.deb") pass "file name matches Version and Architecture" ;;
		*) fail "$(basename "$deb") is not cardnode_${ver}_$arch.deb" ;;
	esac
	local out
	if out=$(lintian --fail-on error,warning "$deb" 2>&1); then
		pass "lintian: no error or warning not overridden"
	else
		printf '%s\n' "$out" >&2
		fail "lintian"
	fi
	mkdir -p "$x"
	dpkg-deb -R "$deb" "$x"
	local f
	for f in usr/bin/cardnode lib/systemd/system/cardnode-server.service \
		lib/systemd/system/cardnode-agent.service etc/default/cardnode-server \
		etc/default/cardnode-agent usr/lib/sysusers.d/cardnode.conf \
		usr/share/bash-completion/completions/cardnode usr/share/man/man1/cardnode.1.gz \
		usr/share/doc/cardnode/copyright usr/share/doc/cardnode/changelog.Debian.gz \
		usr/share/doc/cardnode/examples/prometheus.yml usr/share/doc/cardnode/examples/alerts.yml \
		usr/share/doc/cardnode/examples/grafana-dashboard.json usr/share/lintian/overrides/cardnode; do
		[ -f "$x/$f" ] || fail "missing /$f"
	done
	pass "every file in place"
	check "conffiles: the /etc/default files" test "$(sort "$x/DEBIAN/conffiles" | tr '\n' ' ')" = \
		"/etc/default/cardnode-agent /etc/default/cardnode-server "
	check "units start /usr/bin/cardnode" grep -q '^ExecStart=/usr/bin/cardnode server ' "$x/lib/systemd/system/cardnode-server.service"
	check "units read /etc/default" grep -q '^EnvironmentFile=/etc/default/cardnode-agent$' "$x/lib/systemd/system/cardnode-agent.service"
	check "state dir 0700 in the units" grep -q '^StateDirectoryMode=0700$' "$x/lib/systemd/system/cardnode-server.service"
	check "postinst creates the task user from sysusers.d" grep -q 'systemd-sysusers .*cardnode.conf' "$x/DEBIAN/postinst"
	check "sysusers.d declares cardnode-task" grep -q '^u cardnode-task ' "$x/usr/lib/sysusers.d/cardnode.conf"
	check "postinst enables the server" grep -q "deb-systemd-helper enable 'cardnode-server.service'" "$x/DEBIAN/postinst"
	check "postrm purges the state dir" grep -q 'rm -rf /var/lib/cardnode' "$x/DEBIAN/postrm"
	local machine
	machine=$(LC_ALL=C readelf -h "$x/usr/bin/cardnode" | sed -n 's/ *Machine: *//p')
	case "$arch:$machine" in
		amd64:*X86-64* | arm64:AArch64 | armhf:ARM) pass "binary is $machine" ;;
		*) fail "Architecture $arch but the binary is $machine" ;;
	esac
	local man
	man=$(zcat "$x/usr/share/man/man1/cardnode.1.gz")
	local sub
	for sub in server agent run submit ps logs cancel nodes drain fsck; do
		grep -q "^\.SS $sub\$" <<<"$man" || fail "man page lacks the subcommand $sub"
	done
	check "man page: version ${ver%%-*}" grep -q "\"cardnode ${ver%%-*}\"" <<<"$man"
	# Depends: every NEEDED soname's package (deploy/deb/deps.map) is there.
	local so dep depends
	depends=$(dpkg-deb -f "$deb" Depends)
	for so in $(LC_ALL=C readelf -d "$x/usr/bin/cardnode" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		dep=$(awk -v so="$so" '$1 == so { print $2; exit }' "$root_dir/deploy/deb/deps.map")
		if [ -z "$dep" ]; then fail "NEEDED $so has no line in deploy/deb/deps.map"; continue; fi
		case ", $depends," in *", $dep "*) ;; *) fail "Depends lacks $dep (for $so): $depends" ;; esac
	done
	pass "Depends covers NEEDED: $depends"
	# And the OpenSSL it loads at run time (net/openssl.h), which NEEDED does not show.
	check "Depends has libssl3 (the binary loads libssl.so.3)" grep -q "libssl3 (>= 3" <<<"$depends"
}

# deps.map against dpkg-shlibdeps, for the binary it can see (this machine's): the same
# packages, and versions at least as high as the symbols the binary uses require.
check_shlibdeps() {
	local deb=$1 d=$work/shlibdeps
	mkdir -p "$d/debian" "$d/bin"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$d/bin" ./usr/bin/cardnode
	printf 'Source: cardnode\n\nPackage: cardnode\nArchitecture: any\n' > "$d/debian/control"
	local derived
	derived=$(cd "$d" && dpkg-shlibdeps -O bin/usr/bin/cardnode 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
	[ -n "$derived" ] || { fail "dpkg-shlibdeps derived nothing"; return; }
	local ours entry pkg want have agree=1
	ours=$(dpkg-deb -f "$deb" Depends)
	local IFS=,
	for entry in $derived; do
		entry=${entry# }
		pkg=${entry%% *}
		want=$(sed -n 's/.*(>= \(.*\))/\1/p' <<<"$entry")
		have=$(tr ',' '\n' <<<"$ours" | sed -n "s/^ *$pkg (>= \(.*\))/\1/p")
		if [ -z "$have" ]; then
			fail "dpkg-shlibdeps wants $entry; Depends has no versioned $pkg ($ours)"
			agree=0
		elif [ -n "$want" ] && ! dpkg --compare-versions "$have" ge "$want"; then
			fail "dpkg-shlibdeps wants $entry; deps.map says $have"
			agree=0
		fi
	done
	if [ "$agree" = 1 ]; then pass "deploy/deb/deps.map agrees with dpkg-shlibdeps ($derived)"; fi
}

for deb in "$old" "$new" "${others[@]}"; do check_package "$deb"; done
check "OLD and NEW are $host_arch" test "$(dpkg-deb -f "$old" Architecture) $(dpkg-deb -f "$new" Architecture)" = "$host_arch $host_arch"
check "NEW is newer than OLD" dpkg --compare-versions "$(dpkg-deb -f "$new" Version)" gt "$(dpkg-deb -f "$old" Version)"
check_shlibdeps "$old"

skip=""
if [ "$(id -u)" != 0 ]; then
	skip="not root"
elif ! command -v unshare >/dev/null; then
	skip="no unshare (util-linux)"
elif ! grep -qw overlay /proc/filesystems && ! modprobe overlay 2>/dev/null; then
	skip="no overlayfs in this kernel"
elif ! unshare --mount --propagation private true 2>/dev/null; then
	skip="cannot make a mount namespace here (unshare --mount failed)"
fi
if [ -n "$skip" ]; then
	echo "deb_test: SKIP the install/upgrade/remove/purge cycle: $skip"
else
	host_before=$(sha256sum /etc/passwd /etc/group /var/lib/dpkg/status; ls -la /etc/systemd/system /var/lib 2>/dev/null)
	if unshare --mount --propagation private "$0" --inside "$old" "$new"; then
		pass "install / upgrade / remove / purge cycle"
	else
		fail "install / upgrade / remove / purge cycle"
	fi
	check "the host is unchanged (users, dpkg status, units, /var/lib)" \
		test "$(sha256sum /etc/passwd /etc/group /var/lib/dpkg/status; ls -la /etc/systemd/system /var/lib 2>/dev/null)" = "$host_before"
fi

if [ $failures -gt 0 ]; then
	echo "deb_test: $failures check(s) FAILED" >&2
	exit 1
fi
echo "deb_test: all checks passed"
