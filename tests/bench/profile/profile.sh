#!/usr/bin/env bash
# Where cgwd's CPU goes on the 500-device load (issue 17): perf samples
# (cpu-clock, so it works where hardware counters are not exposed) of the
# whole daemon for WINDOW seconds, then the split by shared object and the
# top symbols. Needs perf (Debian linux-perf); not part of make test or bench.
#
#   tests/bench/profile/profile.sh [BUILD_DIR] > profile.txt   (WINDOW=30)
set -u
export CGW_BUILD=${1:-${CGW_BUILD:-$(pwd)/build}}
CGW_BUILD=$(cd "$CGW_BUILD" && pwd)
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../../lib.sh"
source "$HERE/../load500.lib"
WINDOW=${WINDOW:-30}
command -v perf >/dev/null || { echo "profile: needs perf (apt-get install linux-perf)" >&2; exit 1; }

load500_sim
mq=$(free_port)
start_mosquitto "$mq"
bg_start mosquitto_sub -p "$mq" -q 1 -t 'cgw/#' >/dev/null 2>&1
load500_cgwd_yaml "$mq"
bg_start "$CGW_BUILD/cgwd" -c "$TMP/cgw.yaml" -f 2>"$TMP/cgwd.log"
pid=$BG_PID
sleep 5
perf record -e cpu-clock -F 2000 -g -p "$pid" -o "$TMP/perf.data" -- sleep "$WINDOW" >"$TMP/perf.log" 2>&1 || { echo "profile: perf record failed:" >&2; cat "$TMP/perf.log" >&2; }
echo "cgwd on 500 devices x 30 registers at 1 s, ${WINDOW} s of cpu-clock samples"
echo
echo "## by shared object (self)"
perf report -i "$TMP/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -15
echo
echo "## top symbols (self)"
perf report -i "$TMP/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null | grep -E '^ +[0-9]' | head -40
echo
echo "## top cgwd functions with callees (children)"
perf report -i "$TMP/perf.data" --children --sort sym --stdio --dsos cgwd 2>/dev/null | grep -E '^ +[0-9]' | head -25
