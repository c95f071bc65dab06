# Checks a `mosquitto_sub -v` capture of telemetry made by outbox_fill:
# every k from 1..N arrived, per device in order, duplicates only with the
# same id. Prints a summary line; exit 1 on a violation.
#   awk -v N=100000 -f check_stream.awk capture
{
	topic = $1
	if (topic !~ /\/telemetry$/) next
	match($0, /"id":"[^"]*"/); id = substr($0, RSTART + 6, RLENGTH - 7)
	match($0, /"k":[0-9]+/); k = substr($0, RSTART + 4, RLENGTH - 4) + 0
	match($0, /"device":"[^"]*"/); dev = substr($0, RSTART + 10, RLENGTH - 11)
	if ($0 ~ /"delayed":true/) delayed++
	lines++
	if (k in seen) {
		dups++
		if (seen[k] != id) { printf "k=%d arrived with two ids: %s and %s\n", k, seen[k], id; bad++ }
		next
	}
	seen[k] = id; got++
	if ((dev in last) && k < last[dev]) { printf "order: %s got k=%d after k=%d\n", dev, k, last[dev]; bad++ }
	last[dev] = k
}
END {
	missing = 0
	for (i = 1; i <= N; i++) if (!(i in seen)) missing++
	printf "lines=%d unique=%d missing=%d duplicates=%d delayed=%d violations=%d\n", lines, got, missing, dups, delayed, bad
	exit (missing || bad) ? 1 : 0
}
