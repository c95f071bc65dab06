#!/usr/bin/env bash
# Golden tests of the configuration checker.
#   bad/NAME.yaml  must exit 2 and print exactly bad/NAME.expected on stderr
#   good/NAME.yaml must exit 0
#   warn/NAME.yaml must exit 0 and print exactly warn/NAME.expected on stderr
# Paths in messages are as given on the command line, so run from the top.
. "$(dirname "$0")/../lib.sh"
cd "$TOP"
CGWD=$CGW_BUILD/cgwd
export CGW_PROFILES_DIR=config/profiles
# git keeps only the x bit: make the world-readable secret world-readable
chmod 0644 tests/config/bad/secrets/world-readable.key

for f in tests/config/good/*.yaml; do
	if out=$("$CGWD" --check-config -c "$f" 2>&1); then ok "valid: $f"; else not_ok "valid: $f"; echo "$out" | sed 's/^/# /'; fi
done
for f in tests/config/bad/*.yaml; do
	exp=${f%.yaml}.expected
	"$CGWD" --check-config -c "$f" >/dev/null 2>"$TMP/err"
	rc=$?
	grep -v '^cgwd: ' "$TMP/err" >"$TMP/got"
	if [ $rc -eq 2 ] && diff -u "$exp" "$TMP/got" >"$TMP/diff"; then
		ok "rejected with the expected FILE:LINE errors: $f"
	else
		not_ok "rejected with the expected FILE:LINE errors: $f (exit $rc)"
		sed 's/^/# /' "$TMP/diff"
	fi
done
for f in tests/config/warn/*.yaml; do
	exp=${f%.yaml}.expected
	"$CGWD" --check-config -c "$f" >/dev/null 2>"$TMP/err"
	rc=$?
	if [ $rc -eq 0 ] && diff -u "$exp" "$TMP/err" >"$TMP/diff"; then
		ok "accepted with the expected FILE:LINE warnings: $f"
	else
		not_ok "accepted with the expected FILE:LINE warnings: $f (exit $rc)"
		sed 's/^/# /' "$TMP/diff"
	fi
done

# the shipped example checks, and prints the summary
"$CGWD" --check-config -c config/cgw.yaml >/dev/null; check "config/cgw.yaml checks (exit 0)" test $? -eq 0
out=$("$CGWD" --check-config -c config/cgw.yaml)
check "summary lists buses, devices, points, rules, uplinks" \
	grep -q "devices: 3, points: 23, alarm rules: 22" <<<"$out"
out=$("$CGWD" --check-config -v -c config/cgw.yaml)
check "-v shows the Modbus request plan" grep -q "bus rs485-1: 3 requests per cycle for 5 points" <<<"$out"
check "-v names the device and points of each request" \
	grep -q "^  unit 3 input 1..2 (2 registers) smoke-b3-3f-01: smoke@1, temperature@2$" <<<"$out"
# every key of the reference is documented in the annotated example
missing=""
for k in $("$CGWD" --help-config | sed -n 's/^  \([a-z_0-9]*\) .*/\1/p' | sort -u); do
	grep -qE "(^|[ {,#])$k:" config/cgw.yaml config/profiles/*.yaml || missing="$missing $k"
done
check "every configuration key appears in config/cgw.yaml or a shipped profile${missing:+ (missing:$missing)}" test -z "$missing"
# usage errors exit 2
"$CGWD" >/dev/null 2>&1; check "no -c: exit 2" test $? -eq 2
"$CGWD" -c config/cgw.yaml --log-level loud >/dev/null 2>&1; check "bad --log-level: exit 2" test $? -eq 2
"$CGWD" --check-config -c /nonexistent.yaml 2>"$TMP/err" >/dev/null; rc=$?
check "unreadable main file: exit 2 with a FILE: message" \
	bash -c "[ $rc -eq 2 ] && grep -q '^/nonexistent.yaml:0: cannot read: No such file or directory' '$TMP/err'"
done_testing
