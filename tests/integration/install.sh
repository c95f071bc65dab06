#!/usr/bin/env bash
# `make install DESTDIR=... PREFIX=/usr`: the tree a Debian maintainer expects,
# and `make uninstall` takes it away again. Built in a scratch build directory
# so the suite's own binaries keep their PREFIX.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"
R=$TMP/root
if ! nice make -s -j2 B="$TMP/build" DESTDIR="$R" PREFIX=/usr install >"$TMP/install.log" 2>&1; then
	not_ok "make install DESTDIR PREFIX=/usr"
	sed 's/^/# /' "$TMP/install.log" | tail -20
	done_testing
	exit 1
fi
ok "make install DESTDIR PREFIX=/usr"
for f in usr/sbin/cgwd usr/bin/cgwctl usr/share/cgw/profiles/smoke-detector.yaml \
	usr/share/doc/cgw/README.md usr/share/doc/cgw/LICENSE usr/share/doc/cgw/examples/cgw.yaml \
	usr/share/doc/cgw/examples/demo/devices.yaml usr/share/man/man8/cgwd.8 \
	usr/share/man/man5/cgw.yaml.5 usr/share/man/man1/cgwctl.1 lib/systemd/system/cgwd.service \
	usr/lib/sysusers.d/cgw.conf usr/lib/tmpfiles.d/cgw.conf etc/cgw/cgw.yaml; do
	check "installed: /$f" test -f "$R/$f"
done
for f in $(ls docs/*.md 2>/dev/null); do
	check "protocol document in the doc directory: ${f##*/}" test -f "$R/usr/share/doc/cgw/${f##*/}"
done
check "README states the license" grep -q '^MIT' "$R/usr/share/doc/cgw/LICENSE"
check "cgwd and cgwctl stripped" bash -c "file '$R/usr/sbin/cgwd' '$R/usr/bin/cgwctl' | grep -c ', stripped' | grep -qx 2"
stray=$(find "$R" -type f \( -perm -o+w -o -perm -g+w \) | sed "s|$R||")
check "no group- or world-writable file${stray:+ ($stray)}" test -z "$stray"
check "binaries 0755, documents 0644, /etc/cgw/cgw.yaml 0640" bash -c \
	"[ \$(stat -c %a '$R/usr/sbin/cgwd') = 755 ] && [ \$(stat -c %a '$R/usr/share/man/man5/cgw.yaml.5') = 644 ] && [ \$(stat -c %a '$R/etc/cgw/cgw.yaml') = 640 ]"
# documents carry the actual PREFIX
# (README.md speaks of the build: `make install PREFIX=/usr/local` is its default)
left=$(grep -rl '/usr/local\|@\(SBIN\|DATA\|DOC\)DIR@' "$R" 2>/dev/null |
	grep -v '/usr/sbin/\|/usr/bin/\|/doc/cgw/README.md$' | sed "s|$R||")
check "no document names /usr/local or a placeholder${left:+ ($left)}" test -z "$left"
check "the unit runs /usr/sbin/cgwd" grep -q '^ExecStart=/usr/sbin/cgwd ' "$R/lib/systemd/system/cgwd.service"
check "cgw.yaml(5) names /usr/share/cgw/profiles" grep -q '/usr/share/cgw/profiles' "$R/usr/share/man/man5/cgw.yaml.5"
check "the installed cgwd looks for shipped profiles in /usr/share/cgw" \
	grep -qa '/usr/share/cgw/profiles' "$R/usr/sbin/cgwd"
# /etc/cgw/cgw.yaml: a commented skeleton that checks, not the demo
"$CGW_BUILD/cgwd" --check-config -c "$R/etc/cgw/cgw.yaml" >"$TMP/out" 2>&1
check "installed /etc/cgw/cgw.yaml passes --check-config" test $? -eq 0
check "installed /etc/cgw/cgw.yaml names no device (not the demo)" \
	bash -c "grep -q '^devices: 0,' '$TMP/out' && ! grep -v '^ *#' '$R/etc/cgw/cgw.yaml' | grep -q '^devices:'"
# an admin's file survives a reinstall and an uninstall
echo "# edited by the admin" >>"$R/etc/cgw/cgw.yaml"
nice make -s B="$TMP/build" DESTDIR="$R" PREFIX=/usr install >"$TMP/install2.log" 2>&1
check "reinstall keeps an edited /etc/cgw/cgw.yaml" grep -q 'edited by the admin' "$R/etc/cgw/cgw.yaml"
nice make -s B="$TMP/build" DESTDIR="$R" PREFIX=/usr uninstall >"$TMP/uninstall.log" 2>&1
check "make uninstall succeeds" test $? -eq 0
left=$(find "$R" -type f | sed "s|$R||")
check "uninstall leaves only the edited configuration (${left:-nothing})" test "$left" = "/etc/cgw/cgw.yaml"
nice make -s B="$TMP/build" DESTDIR="$R" PREFIX=/usr install >/dev/null 2>&1
rm -f "$R/etc/cgw/cgw.yaml"
nice make -s B="$TMP/build" DESTDIR="$R" PREFIX=/usr install >/dev/null 2>&1
nice make -s B="$TMP/build" DESTDIR="$R" PREFIX=/usr uninstall >/dev/null 2>&1
left=$(find "$R" -type f | sed "s|$R||")
check "uninstall removes an unedited skeleton too (${left:-nothing left})" test -z "$left"

# cgwd's own umask: a state directory made by hand 0755 still gets a private store
mkdir -m 0755 "$TMP/state"
printf 'gateway: {id: gw-1, site: s, state_dir: %s}\ncontrol: {socket: %s/cgwd.sock}\nmetrics: {enabled: false}\n' "$TMP/state" "$TMP" >"$TMP/umask.yaml"
(umask 022; exec "$CGW_BUILD/cgwd" -c "$TMP/umask.yaml" --foreground >"$TMP/cgwd.log" 2>&1) &
pid=$!
_bg_pids+=("$pid")
wait_for 10 test -S "$TMP/cgwd.sock"
kill -TERM "$pid"; wait "$pid" 2>/dev/null
db=$(ls "$TMP/state"/*.db 2>/dev/null | head -1)
check "store created 0640 under umask 022 (${db:+$(stat -c %a "$db")})" \
	bash -c "[ -n '$db' ] && [ \$(stat -c %a '$db') = 640 ]"

# `make run` twice: the second refuses and leaves the running demo's store alone
DB=$TMP/demo-b
mkdir -p "$DB"
for b in cgwd cgwctl cgw-sim; do ln -s "$CGW_BUILD/$b" "$DB/$b"; done
mq=$(free_port); mb=$(free_port); mt=$(free_port)
export DEMO_MQTT_PORT=$mq DEMO_MODBUS_PORT=$mb DEMO_METRICS_PORT=$mt
setsid config/demo/run.sh "$DB" >"$TMP/demo1.log" 2>&1 &
demo=$!
_bg_pids+=("$demo")
if wait_for 20 test -S "$DB/demo/cgwd.sock" && wait_for 10 bash -c "ls '$DB'/demo/state/*.db >/dev/null"; then
	ino=$(stat -c %i "$DB"/demo/state/*.db)
	config/demo/run.sh "$DB" >"$TMP/demo2.log" 2>&1
	rc=$?
	check "a second make run refuses (exit 1, 'already running')" \
		bash -c "[ $rc -eq 1 ] && grep -q 'already running' '$TMP/demo2.log'"
	check "the running demo's store is untouched" \
		bash -c "[ \"\$(stat -c %i '$DB'/demo/state/*.db 2>/dev/null)\" = '$ino' ]"
	check "the running demo still answers" quiet "$CGW_BUILD/cgwctl" -s "$DB/demo/cgwd.sock" status
else
	not_ok "the demo started"
	sed 's/^/# /' "$TMP/demo1.log" | tail -10
fi
kill -TERM -- -"$demo" 2>/dev/null
wait "$demo" 2>/dev/null
done_testing
