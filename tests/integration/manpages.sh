#!/usr/bin/env bash
# The manual pages: they render without a warning, cgw.yaml(5) documents every
# key `cgwd --help-config` prints, in its section and with its default, and
# cgwd(8) and cgwctl(1) document every option and command their --help shows.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
CTL=$CGW_BUILD/cgwctl
DOCS=$TOP/docs
PAGES=(cgwd.8 cgw.yaml.5 cgwctl.1)

for p in "${PAGES[@]}"; do
	check "$p exists" test -s "$DOCS/$p"
	if command -v man >/dev/null; then
		for w in 80 60; do
			out=$(MANWIDTH=$w man --warnings -l "$DOCS/$p" 2>&1 >/dev/null)
			check "$p renders with man at $w columns without a warning" test -z "$out"
			[ -z "$out" ] || diag "$out"
		done
	else
		ok "$p: man # SKIP man is not installed"
	fi
	if command -v groff >/dev/null; then
		out=$(groff -man -ww -z "$DOCS/$p" 2>&1)
		check "$p: groff -man -ww is silent" test -z "$out"
		[ -z "$out" ] || diag "$out"
	else
		ok "$p: groff # SKIP groff is not installed"
	fi
	check "$p: NAME, SYNOPSIS, DESCRIPTION, SEE ALSO" bash -c \
		"for s in NAME SYNOPSIS DESCRIPTION 'SEE ALSO'; do grep -q \"^\\.SH \\\"\\?\$s\" '$DOCS/$p' || exit 1; done"
done

# ---- cgw.yaml(5) against the daemon's key tables -------------------------------------
"$CGWD" --help-config >"$TMP/ref" 2>&1
check "cgwd --help-config runs" test -s "$TMP/ref"
# section TAB key TAB default ("-" when none)
awk '
	/^[^ ].*:$/ { sec = substr($0, 1, length($0) - 1); next }
	/^  [^ ]/ {
		d = "-"
		if (match($0, /default: [^;]*/)) d = substr($0, RSTART + 9, RLENGTH - 9)
		print sec "\t" $1 "\t" d
	}' "$TMP/ref" >"$TMP/keys"
check "the reference lists keys ($(wc -l <"$TMP/keys"))" test "$(wc -l <"$TMP/keys")" -gt 50
# man page: section TAB key TAB the tag line, escapes undone; sections by
# the first word of .SS ("Top level" -> "the top level", "buses" -> "bus")
awk '
	function unesc(s) {
		gsub(/\\-/, "-", s); gsub(/\\e/, "\\", s); gsub(/\\&/, "", s)
		gsub(/\\f[BIRP]/, "", s); gsub(/\\\(dq/, "\"", s); gsub(/"/, "", s)
		return s
	}
	/^\.SS / {
		w = tolower($2); gsub(/"/, "", w)
		if (w == "top") w = "the top level"
		else if (w == "buses") w = "bus"
		else if (w ~ /^(uplinks|devices|points|alarms)$/) w = substr(w, 1, length(w) - 1)
		sec = w; next
	}
	/^\.SH / { sec = ""; next }
	/^\.TP/ { tag = 1; next }
	tag && /^\.BR? / && sec != "" { print sec "\t" $2 "\t" unesc($0) }
	{ tag = 0 }' "$DOCS/cgw.yaml.5" >"$TMP/man"
missing=0
while IFS=$'\t' read -r sec key def; do
	line=$(awk -F'\t' -v s="$sec" -v k="$key" '$1 == s && $2 == k { print $3; exit }' "$TMP/man")
	if [ -z "$line" ]; then
		diag "cgw.yaml.5: $sec: key '$key' is not documented"
		missing=$((missing + 1))
		continue
	fi
	[ "$def" = '""' ] && def=empty
	if [ "$def" != - ] && [[ "$line" != *"default: $def"* ]]; then
		diag "cgw.yaml.5: $sec: $key: default should be '$def': $line"
		missing=$((missing + 1))
	fi
done <"$TMP/keys"
check "cgw.yaml.5 documents every key of cgwd --help-config with its default" test "$missing" -eq 0
# and nothing the daemon does not know
extra=0
while IFS=$'\t' read -r sec key _; do
	if ! awk -F'\t' -v s="$sec" -v k="$key" '$1 == s && $2 == k { f = 1 } END { exit !f }' "$TMP/keys"; then
		diag "cgw.yaml.5: $sec: '$key' is not a key of cgwd"
		extra=$((extra + 1))
	fi
done <"$TMP/man"
check "cgw.yaml.5 documents no key the daemon does not have" test "$extra" -eq 0

# ---- cgwd(8) and cgwctl(1) against --help --------------------------------------------
# every long option of --help, as written in the page (\- for -)
opts_documented() { # help-text page
	local o bad=0
	for o in $(grep -oE -- '--[a-z][a-z-]+' "$1" | sort -u); do
		grep -qF -- "$(echo "$o" | sed 's/-/\\-/g')" "$2" || { diag "$(basename "$2"): $o is not documented"; bad=1; }
	done
	return $bad
}
"$CGWD" --help >"$TMP/cgwd.help" 2>&1
check "cgwd.8 documents every option of cgwd --help" opts_documented "$TMP/cgwd.help" "$DOCS/cgwd.8"
if [ -x "$CTL" ]; then
	"$CTL" --help >"$TMP/ctl.help" 2>&1
	check "cgwctl.1 documents every option of cgwctl --help" opts_documented "$TMP/ctl.help" "$DOCS/cgwctl.1"
	cmds=$(awk '/^Commands:/ { on = 1; next } /^$/ { on = 0 } on && /^  [a-z]/ { print $1 }' "$TMP/ctl.help")
	bad=0
	for c in $cmds; do
		grep -qE "^\.BI? \"?$c( |\"|$)" "$DOCS/cgwctl.1" || { diag "cgwctl.1: command $c is not documented"; bad=1; }
	done
	check "cgwctl.1 documents every command of cgwctl --help ($(echo $cmds))" test "$bad" -eq 0 -a -n "$cmds"
	check "cgwctl.1 gives the exit codes 0 1 2 3" bash -c \
		"for c in 0 1 2 3; do grep -A1 '^\\.TP' '$DOCS/cgwctl.1' | grep -qx \".B \$c\" || exit 1; done"
else
	ok "cgwctl.1 against cgwctl --help # SKIP no cgwctl"
fi
done_testing
