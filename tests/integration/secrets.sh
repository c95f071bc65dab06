#!/usr/bin/env bash
# Secret files as a Debian admin lays them out, checked by the real cgwd:
# root:cgw 0640 accepted, 0644 refused with the exact fix, systemd
# credentials found in $CREDENTIALS_DIRECTORY. A machine without a `cgw`
# account gets one in a private mount namespace (unshare -m, needs root).
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
export CGW_PROFILES_DIR=$TOP/config/profiles

mkdir -p "$TMP/etc/secrets" "$TMP/creds"
write_cfg() { # password_file value
	cat >"$TMP/etc/cgw.yaml" <<EOT
gateway: {id: gw-1, site: s, state_dir: $TMP/state}
uplinks:
  - {name: platform, type: mqtt, url: mqtt://127.0.0.1:1883, password_file: $1}
EOT
}

# inside: run with a `cgw` group that the machine may not have
in_ns() {
	if getent group cgw >/dev/null; then
		"$@"
	else
		cp /etc/group "$TMP/group"
		echo "cgw:x:4711:" >>"$TMP/group"
		unshare -m bash -c 'mount --bind "$1" /etc/group && shift && exec "$@"' _ "$TMP/group" "$@"
	fi
}

if [ "$(id -u)" -ne 0 ] || ! unshare -m true 2>/dev/null; then
	echo "skipped: needs root"
	ok "skipped: needs root"
	done_testing
	exit 0
fi

write_cfg "$TMP/etc/secrets/platform.pass"
echo s3cret >"$TMP/etc/secrets/platform.pass"
chmod 0640 "$TMP/etc/secrets/platform.pass"
in_ns chown root:cgw "$TMP/etc/secrets/platform.pass"
in_ns "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "root:cgw 0640 secret accepted (exit 0)" test $? -eq 0


chmod 0644 "$TMP/etc/secrets/platform.pass"
in_ns "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
rc=$?
F=$TMP/etc/secrets/platform.pass
check "0644 secret refused (exit 2)" test $rc -eq 2
check "refusal gives FILE:LINE and the exact fix" \
	grep -qF "$TMP/etc/cgw.yaml:3: password_file: $F is readable by others (mode 0644); fix: chown root:cgw $F && chmod 0640 $F" "$TMP/out"
chmod 0660 "$F"
in_ns "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "group-writable secret refused (exit 2)" test $? -eq 2
# a group that is not the service's may not read it
chmod 0640 "$F"
chown root:nogroup "$F" 2>/dev/null || chown root:65534 "$F"
in_ns "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "0640 with a foreign group refused (exit 2)" \
	bash -c "[ $? -eq 2 ] && grep -q 'not the service' '$TMP/out'"

# systemd credentials: LoadCredential=platform.pass:... puts it here, 0400
write_cfg "credential:platform.pass"
echo from-systemd >"$TMP/creds/platform.pass"
chmod 0400 "$TMP/creds/platform.pass"
CREDENTIALS_DIRECTORY=$TMP/creds "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "credential:NAME found in \$CREDENTIALS_DIRECTORY (exit 0, no warning)" \
	bash -c "[ $? -eq 0 ] && ! grep -q warning '$TMP/out'"
rm "$TMP/creds/platform.pass"
CREDENTIALS_DIRECTORY=$TMP/creds "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "a credential missing from \$CREDENTIALS_DIRECTORY is an error" \
	bash -c "[ $? -eq 2 ] && grep -q 'platform.pass: No such file' '$TMP/out'"
env -u CREDENTIALS_DIRECTORY "$CGWD" --check-config -c "$TMP/etc/cgw.yaml" >"$TMP/out" 2>&1
check "outside the service: a warning that only systemd can tell, exit 0" \
	bash -c "[ $? -eq 0 ] && grep -q '3: warning: password_file: .credential:platform.pass. not checked' '$TMP/out'"
# the shipped unit shows the form
check "cgwd.service shows LoadCredential=" grep -q '^# *LoadCredential=' "$TOP/systemd/cgwd.service"
done_testing
