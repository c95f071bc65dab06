# Where a process's memory goes, from /proc/PID/smaps:
#   awk -v EXE=/path/to/program -f smaps.awk /proc/PID/smaps
# prints one line: PSS, private (USS) and PSS by kind of mapping:
#   heap     [heap]: the main malloc arena (brk)
#   arenas   glibc's per-thread malloc arenas (anonymous, 64 MB-aligned)
#   stacks   [stack] and thread stacks (anonymous, right above a guard page)
#   anon     other anonymous memory (large malloc blocks are mmapped)
#   reloc    libraries' relocated data and .bss (private dirty)
#   libs     libraries' text and constants (shared: PSS divides them among
#            the processes that map them; RSS in brackets)
#   prog     the program's own file (text, constants, the console's assets)
#   files    other file mappings (SQLite's -shm)
# mawk-compatible: addresses are compared as strings, never converted.
function flush() {
	if (!have) return
	if (path == "[heap]") cat = "heap"
	else if (path == "[stack]") cat = "stacks"
	else if (path ~ /^\[/) cat = "other"
	else if (path != "") {
		if (path == EXE) cat = "prog"
		else if (path ~ /\.so/) {
			P["reloc"] += pd; R["reloc"] += pd
			pss -= pd; rss -= pd; cat = "libs"
		} else cat = "files"
	} else {
		l = length(s)
		if (prev_end == s && prev_path != "" && prev_path !~ /^\[/) cat = "reloc"   # .bss
		else if (substr(s, l - 5) == "000000" && index("048c", substr(s, l - 6, 1))) cat = "arenas"
		else if (prev_end == s && prev_none) cat = "stacks"
		else cat = "anon"
	}
	P[cat] += pss; R[cat] += rss
	prev_end = e; prev_path = path; prev_none = (path == "" && perms ~ /^---/)
	have = 0
}
/^[0-9a-f]+-[0-9a-f]+ / {
	flush()
	split($1, a, "-"); s = a[1]; e = a[2]; perms = $2
	path = $6; for (i = 7; i <= NF; i++) path = path " " $i
	have = 1; pss = pd = rss = 0; next
}
/^Pss:/ { pss = $2; PSS += $2 }
/^Rss:/ { rss = $2 }
/^Private_Dirty:/ { pd = $2; USS += $2 }
/^Private_Clean:/ { USS += $2 }
END {
	flush()
	printf "PSS %.1f MB, private %.1f MB: heap %.2f, arenas %.2f, stacks %.2f, anon %.2f, reloc %.2f, libs %.2f (RSS %.1f), prog %.2f, files %.2f MB\n",
		PSS / 1024, USS / 1024, P["heap"] / 1024, P["arenas"] / 1024, P["stacks"] / 1024, P["anon"] / 1024,
		P["reloc"] / 1024, P["libs"] / 1024, R["libs"] / 1024, P["prog"] / 1024, P["files"] / 1024
}
