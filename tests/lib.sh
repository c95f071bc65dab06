# Shared helpers for shell test suites: TAP output, free ports, process cleanup.
# Source it; every process started with `bg_start` is killed on exit.
set -u
CGW_BUILD=${CGW_BUILD:-$(pwd)/build}
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_tap_n=0
_tap_fail=0
_bg_pids=()
TMP=$(mktemp -d "${TMPDIR:-/tmp}/cgw-test.XXXXXX")

ok() { _tap_n=$((_tap_n + 1)); echo "ok $_tap_n - $*"; }
not_ok() { _tap_n=$((_tap_n + 1)); _tap_fail=$((_tap_fail + 1)); echo "not ok $_tap_n - $*"; }
# check "description" command...: ok if the command succeeds
check() { local d=$1; shift; if "$@"; then ok "$d"; else not_ok "$d"; fi; }
quiet() { "$@" >/dev/null; }
diag() { echo "# $*"; }

# A TCP port that nothing listens on now (bind test through bash /dev/tcp is
# not enough: ask the kernel for an ephemeral port via a listening socket).
free_port() {
	local p
	for _ in $(seq 50); do
		# below the ephemeral range (32768+), so that no outgoing connection
		# takes the port between now and the bind
		p=$((20000 + RANDOM % 12000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			if ! ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then echo "$p"; return 0; fi
		fi
	done
	return 1
}

bg_start() { # cmd... ; sets BG_PID
	"$@" &
	BG_PID=$!
	_bg_pids+=("$BG_PID")
}

# wait_for SECONDS command...: poll until the command succeeds (10 ms steps).
wait_for() {
	local deadline=$(($(date +%s%N) / 1000000 + $1 * 1000)); shift
	while :; do
		"$@" 2>/dev/null && return 0
		[ $(($(date +%s%N) / 1000000)) -ge $deadline ] && return 1
		sleep 0.01
	done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_mosquitto() { # port -> MOSQ_PID
	local port=$1 conf=$TMP/mosquitto-$1.conf
	printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n' "$port" >"$conf"
	bg_start mosquitto -c "$conf" >"$TMP/mosquitto-$port.log" 2>&1
	MOSQ_PID=$BG_PID
	wait_for 5 port_open "$port"
}

_cleanup() {
	local p
	for p in "${_bg_pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
	for p in "${_bg_pids[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
		kill -KILL "$p" 2>/dev/null
	done
	wait 2>/dev/null
	[ -n "${KEEP_TMP:-}" ] && echo "# kept $TMP" || rm -rf "$TMP"
}
trap _cleanup EXIT

# Every message a suite receives from cgwd is checked against the contract
# (schema/*.json): mosquitto_sub started through this function with -v and
# its output in a file registers that file, and done_testing validates
# every registered file (one TAP line; any mismatch fails the suite).
mosquitto_sub() {
	local a out me=$BASHPID
	for a in "$@"; do
		if [ "$a" = -v ]; then
			out=$(readlink "/proc/$me/fd/1" 2>/dev/null)
			[ -f "$out" ] && echo "$out" >>"$TMP/.wire-captures"
			break
		fi
	done
	# in a background subshell (bg_start): become mosquitto_sub, so that
	# BG_PID is the subscriber itself
	if [ "$BASHPID" != "$$" ]; then exec mosquitto_sub "$@"; fi
	command mosquitto_sub "$@"
}

wire_python() {
	local py
	for py in /usr/bin/python3 python3; do
		"$py" -c 'import jsonschema' 2>/dev/null && { echo "$py"; return 0; }
	done
	return 1
}

# wire_check FILE...: validates mosquitto_sub -v captures against schema/.
wire_check() {
	local py
	py=$(wire_python) || { echo "# python3-jsonschema missing (make deps)"; return 1; }
	"$py" "$TOP/tests/tools/wire_check.py" "$TOP/schema" "$@" | sed 's/^/# /'
	return "${PIPESTATUS[0]}"
}

_wire_check_all() {
	[ -s "$TMP/.wire-captures" ] || return 0
	local files
	mapfile -t files < <(sort -u "$TMP/.wire-captures")
	check "every message received validates against schema/ (protocol.md)" wire_check "${files[@]}"
}

done_testing() {
	_wire_check_all
	echo "1..$_tap_n"
	[ "$_tap_fail" -eq 0 ]
}
