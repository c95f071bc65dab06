#!/usr/bin/env bash
# make bench: runs every benchmark and writes tests/bench/RESULTS.md from
# this run: the machine, each benchmark's figures (with the reference it was
# measured against in the same run, and the ratio), and the command.
set -u
B=${1:-build}
export CGW_BUILD=$(cd "$B" && pwd)
cd "$(dirname "$0")/../.."
out=tests/bench/RESULTS.md
tmp=$(mktemp)
{
	echo "# Benchmark results"
	echo
	echo "Written by \`make bench\` on $(date -u '+%Y-%m-%d %H:%M UTC'); every figure below is from that run."
	echo
	echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')),"
	echo "$(free -g | awk '/Mem:/{print $2}') GiB RAM, $(uname -sr), $(. /etc/os-release; echo "$PRETTY_NAME")."
	echo
} >"$tmp"
status=0
run() { # title command...
	local title=$1; shift
	echo "== $title" >&2
	{
		echo "## $title"
		echo
		echo "Command: \`$*\`"
		echo
		echo '```'
	} >>"$tmp"
	if ! "$@" 2>&1 | tee -a "$tmp" >&2; then status=1; fi
	echo '```' >>"$tmp"
	echo >>"$tmp"
}
for b in "$CGW_BUILD"/bench/bench_*; do
	[ -x "$b" ] || continue
	run "$(basename "$b")" "$B/bench/$(basename "$b")"
done
for s in tests/bench/*.sh; do
	[ "$(basename "$s")" = run.sh ] && continue
	[ -f "$s" ] || continue
	run "$(basename "$s" .sh)" bash "$s" "$B"
done
mv "$tmp" "$out"
echo "wrote $out" >&2
exit $status
