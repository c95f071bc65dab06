#!/usr/bin/env bash
# The console on a LAN address without a certificate: cgwd makes one at its
# first start (EC P-256, self-signed, the gateway's name and the address in
# it) with its key (0600) in the state directory, logs the SHA-256
# fingerprint, serves it over TLS, shows it in cgwctl status, and serves the
# same certificate after a restart. A damaged pair is a clear error.
. "$(dirname "$0")/../lib.sh"
export CGW_PROFILES_DIR=$TOP/config/profiles
CTL=$CGW_BUILD/cgwctl

# a local address that is not loopback, if the machine has one (else the
# wildcard, reached through 127.0.0.1)
lan=$(ip -4 -o addr show scope global 2>/dev/null | awk '{ sub("/.*", "", $4); print $4; exit }')
wp=$(free_port)
if [ -n "$lan" ]; then listen=$lan:$wp connect=$lan; else listen=0.0.0.0:$wp connect=127.0.0.1; fi
mkdir -p "$TMP/state"
cat >"$TMP/cgw.yaml" <<YAML
gateway: {id: gw-cert, site: s, state_dir: $TMP/state}
control: {socket: $TMP/cgwd.sock}
metrics: {enabled: false}
console: {enabled: true, listen: "$listen"}
YAML
check "a LAN listen without a certificate passes the configuration check" \
	quiet "$CGW_BUILD/cgwd" --check-config -c "$TMP/cgw.yaml"
printf 'gateway: {id: g, site: s, state_dir: %s}\nconsole: {enabled: true, listen: "0.0.0.0:8443", tls_cert: c.pem}\n' "$TMP" >"$TMP/half.yaml"
check "tls_cert without tls_key is still refused" \
	bash -c "! '$CGW_BUILD/cgwd' --check-config -c '$TMP/half.yaml' >'$TMP/half.out' 2>&1 && grep -q 'go together' '$TMP/half.out'"

served() { # the SHA-256 fingerprint of the certificate the console serves
	python3 - "$connect" "$wp" <<'PY'
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    with ctx.wrap_socket(s) as t:
        d = hashlib.sha256(t.getpeercert(binary_form=True)).hexdigest().upper()
print(":".join(d[i:i + 2] for i in range(0, 64, 2)))
PY
}
logged() { sed -n 's/.*console: TLS certificate .*SHA-256 fingerprint \([0-9A-F:]*\).*/\1/p' "$1" | tail -1; }

start() { # log file -> PID
	bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$1"
	PID=$BG_PID
	wait_for 10 port_open_at "$connect" "$wp"
}
port_open_at() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

t0=$EPOCHREALTIME
start "$TMP/d1.log" || not_ok "cgwd serves the console"
t1=$EPOCHREALTIME
diag "first start with certificate making: console open after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }') s"
fp1=$(logged "$TMP/d1.log")
check "the fingerprint is logged at the first start, saying it was made now" \
	bash -c "[ ${#fp1} -eq 95 ] && grep -q 'made now, at the first start' '$TMP/d1.log'"
s1=$(served)
diag "logged $fp1"
diag "served $s1"
check "the served certificate's fingerprint is the logged one" test -n "$s1" -a "$s1" = "$fp1"
check "the file holds that certificate (openssl's fingerprint)" \
	test "$(openssl x509 -in "$TMP/state/console-cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)" = "$fp1"
check "the key is 0600 and the daemon's" \
	bash -c "[ \$(stat -c %a '$TMP/state/console-key.pem') = 600 ] && [ \$(stat -c %u '$TMP/state/console-key.pem') = \$(id -u) ]"
txt=$(openssl x509 -in "$TMP/state/console-cert.pem" -noout -text)
check "EC P-256, signed with SHA-256" bash -c "grep -q 'prime256v1' <<<'$txt' && grep -q 'ecdsa-with-SHA256' <<<'$txt'"
check "the gateway's name in the subject and the subjectAltName" \
	bash -c "grep -q 'Subject: CN *= *gw-cert' <<<'$txt' && grep -q 'DNS:gw-cert' <<<'$txt'"
if [ -n "$lan" ]; then
	check "the listen address in the subjectAltName" grep -q "IP Address:$lan" <<<"$txt"
fi
days=$(( ($(date -d "$(openssl x509 -in "$TMP/state/console-cert.pem" -noout -enddate | cut -d= -f2)" +%s) - $(date +%s)) / 86400 ))
check "valid for a long time (${days} days)" test "$days" -ge 3000
check "the page is served over HTTPS" test "$(curl -sk -m 5 -o /dev/null -w '%{http_code}' "https://$connect:$wp/")" = 200
check "and not in the clear" bash -c "[ \"\$(curl -s -m 5 -o /dev/null -w '%{http_code}' 'http://$connect:$wp/')\" != 200 ]"
st=$("$CTL" -s "$TMP/cgwd.sock" status)
check "cgwctl status shows the console and its certificate's fingerprint" \
	grep -q "^console   https://$listen/, certificate SHA-256 $fp1\$" <<<"$st"
kill "$PID"; wait "$PID" 2>/dev/null

start "$TMP/d2.log" || not_ok "cgwd serves the console again"
fp2=$(logged "$TMP/d2.log")
check "restarted: the same fingerprint logged, made at the first start" \
	bash -c "[ '$fp2' = '$fp1' ] && grep -q 'made by cgwd at its first start' '$TMP/d2.log'"
check "restarted: the same certificate served" test "$(served)" = "$fp1"
kill "$PID"; wait "$PID" 2>/dev/null

# a damaged pair is not replaced behind the installer's back
cp "$TMP/state/console-cert.pem" "$TMP/cert.bak"
echo garbage >"$TMP/state/console-cert.pem"
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/d3.log"
PID=$BG_PID
check "a damaged certificate: a clear error in the log" \
	wait_for 10 grep -q "console-cert.pem is not a PEM certificate.*delete both files" "$TMP/d3.log"
check "and the console does not serve in the clear instead" bash -c "! (exec 3<>/dev/tcp/$connect/$wp) 2>/dev/null"
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
check "the damaged file was left for the installer" grep -q garbage "$TMP/state/console-cert.pem"
chmod 644 "$TMP/state/console-key.pem"
cp "$TMP/cert.bak" "$TMP/state/console-cert.pem"
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/d4.log"
PID=$BG_PID
check "a key others can read is refused" wait_for 10 grep -q "console-key.pem can be read by others" "$TMP/d4.log"
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
# a certificate that cannot be written (here: a directory in the way; the
# same for a read-only state directory): generation fails clearly
rm -f "$TMP/state/console-"*.pem
mkdir "$TMP/state/console-key.pem.tmp"
bg_start "$CGW_BUILD/cgwd" -f -c "$TMP/cgw.yaml" 2>"$TMP/d5.log"
PID=$BG_PID
check "a certificate it cannot write: a clear error" \
	wait_for 10 grep -q "there is no certificate: cannot write the console's certificate and key" "$TMP/d5.log"
check "and no half pair left behind" test ! -e "$TMP/state/console-cert.pem"
kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null
done_testing
