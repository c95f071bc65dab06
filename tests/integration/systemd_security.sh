#!/usr/bin/env bash
# The systemd unit stays hardened: `systemd-analyze security` rates it 2.0 or
# lower, it grants no capability, and it keeps the lifecycle contract with
# cgwd (Type=notify, watchdog, no restart loop on a bad configuration). The
# sysusers and tmpfiles snippets are applied to a scratch root.
# Offline: needs systemd-analyze, not a running systemd.
source "$(dirname "$0")/../lib.sh"

MAX_EXPOSURE=2.0
unit_src=$TOP/systemd/cgwd.service

if ! command -v systemd-analyze >/dev/null; then
	not_ok "systemd-analyze not found: install the systemd package (make deps)"
	done_testing
	exit
fi

# Installed form of the unit, as `make install` writes it, pointing at a stub
# binary so that `verify` can check ExecStart= without a build.
mkdir -p "$TMP/sbin" "$TMP/unit"
printf '#!/bin/sh\nexit 0\n' >"$TMP/sbin/cgwd"
chmod 0755 "$TMP/sbin/cgwd"
unit=$TMP/unit/cgwd.service
sed "s|@SBINDIR@|$TMP/sbin|g" "$unit_src" >"$unit"
check "ExecStart runs SBINDIR/cgwd -c /etc/cgw/cgw.yaml" \
	grep -q "^ExecStart=$TMP/sbin/cgwd -c /etc/cgw/cgw.yaml\$" "$unit"
check "no placeholder left after substitution" bash -c "! grep -q '@[A-Z]*@' '$unit'"

# systemd ignores unknown keys and bad values with a warning only, so any
# output from verify is a failure: a misspelt hardening option is no hardening.
verify_out=$(systemd-analyze verify --man=no "$unit" 2>&1)
verify_rc=$?
if [ "$verify_rc" -eq 0 ] && [ -z "$verify_out" ]; then
	ok "systemd-analyze verify: no warnings"
else
	not_ok "systemd-analyze verify (rc $verify_rc)"
	printf '%s\n' "$verify_out" | sed 's/^/# /'
fi

sec_out=$(systemd-analyze security --offline=yes --no-pager "$unit" 2>"$TMP/sec.err")
sec_rc=$?
exposure=$(printf '%s\n' "$sec_out" | sed -n 's/.*Overall exposure level for cgwd\.service: \([0-9][0-9.]*\).*/\1/p')
if [ "$sec_rc" -ne 0 ] || [ -z "$exposure" ]; then
	not_ok "systemd-analyze security ran and reported an exposure (rc $sec_rc)"
	sed 's/^/# /' "$TMP/sec.err"
elif awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e + 0 <= m + 0) }'; then
	ok "exposure $exposure <= $MAX_EXPOSURE"
else
	not_ok "exposure $exposure > $MAX_EXPOSURE"
	printf '%s\n' "$sec_out" | grep '✗' | sed 's/^/# /'
fi
if [ -s "$TMP/sec.err" ]; then
	not_ok "systemd-analyze security: no parse warnings"
	sed 's/^/# /' "$TMP/sec.err"
else
	ok "systemd-analyze security: no parse warnings"
fi

# The effective value of a key: the last assignment wins in systemd, an empty
# one resets the list; comments and other sections are not looked at.
key() {
	awk -v k="$1" '
		/^\[/ { sec = $0; next }
		sec == "[Service]" && index($0, k "=") == 1 { v = substr($0, length(k) + 2); n++ }
		END { if (n) print v; else print "<unset>" }' "$unit"
}
expect_key() { # key expected
	local v
	v=$(key "$1")
	if [ "$v" = "$2" ]; then ok "$1=$2"; else not_ok "$1 is '$v', want '$2'"; fi
}

expect_key Type notify
expect_key NotifyAccess main
expect_key Restart on-failure
expect_key RestartPreventExitStatus 2
expect_key ExecReload '/bin/kill -HUP $MAINPID'
wd=$(key WatchdogSec)
check "WatchdogSec is set ($wd)" bash -c "[[ '$wd' =~ ^[1-9][0-9]*(s|min)?\$ ]]"

# Capabilities: both sets must be explicitly empty (unset means all of them
# for the bounding set), and no line may name a capability at all.
expect_key CapabilityBoundingSet ''
expect_key AmbientCapabilities ''
cap_lines=$(grep -nE '^[^#;]*CAP_' "$unit")
if [ -z "$cap_lines" ]; then
	ok "no line grants a capability"
else
	not_ok "lines granting capabilities"
	printf '%s\n' "$cap_lines" | sed 's/^/# /'
fi
user=$(key User)
check "runs as a dedicated user ($user), not root" \
	bash -c "[ '$user' = cgw ] && [ '$(key DynamicUser)' = '<unset>' ]"
expect_key NoNewPrivileges yes
expect_key DevicePolicy closed
expect_key UMask 0027
expect_key RuntimeDirectory cgw
expect_key StateDirectory cgw

# sysusers + tmpfiles into a scratch root: the user exists, cannot log in, and
# the configuration becomes readable by it and nobody else.
root=$TMP/root
mkdir -p "$root/etc/cgw"
: >"$root/etc/passwd"; : >"$root/etc/group"; : >"$root/etc/shadow"; : >"$root/etc/gshadow"
if systemd-sysusers --root="$root" - <"$TOP/systemd/cgw.sysusers" >"$TMP/sysusers.log" 2>&1; then
	ok "systemd-sysusers accepts cgw.sysusers"
else
	not_ok "systemd-sysusers rejects cgw.sysusers"
	sed 's/^/# /' "$TMP/sysusers.log"
fi
check "user cgw created with a nologin shell" \
	grep -qE '^cgw:x:[0-9]+:[0-9]+:[^:]*:[^:]*:.*nologin$' "$root/etc/passwd"
check "group cgw created" grep -q '^cgw:x:' "$root/etc/group"

if [ "$(id -u)" -ne 0 ]; then
	ok "tmpfiles sets /etc/cgw owner and modes # SKIP needs root to chown"
else
	install -m 0644 /dev/null "$root/etc/cgw/cgw.yaml"
	gid=$(awk -F: '$1 == "cgw" { print $3 }' "$root/etc/group")
	if systemd-tmpfiles --root="$root" --create - <"$TOP/systemd/cgw.tmpfiles" >"$TMP/tmpfiles.log" 2>&1 &&
		[ "$(stat -c '%a %u %g' "$root/etc/cgw")" = "750 0 $gid" ] &&
		[ "$(stat -c '%a %u %g' "$root/etc/cgw/cgw.yaml")" = "640 0 $gid" ]; then
		ok "tmpfiles makes /etc/cgw root:cgw 0750 and cgw.yaml 0640"
	else
		not_ok "tmpfiles: /etc/cgw $(stat -c '%a %u:%g' "$root/etc/cgw"), cgw.yaml $(stat -c '%a %u:%g' "$root/etc/cgw/cgw.yaml") (cgw gid $gid)"
		sed 's/^/# /' "$TMP/tmpfiles.log"
	fi
fi
# ConfigurationDirectoryMode= must agree with tmpfiles, or systemd warns at
# every start that the existing directory has another mode.
expect_key ConfigurationDirectoryMode 0750

done_testing
