#!/usr/bin/env bash
# TLS to the platform broker: a test CA and certificates made with openssl
# now; the right CA connects, a wrong CA is refused, a wrong host name is
# refused, mutual TLS works with a client certificate and is refused without.
. "$(dirname "$0")/../lib.sh"
CGWD=$CGW_BUILD/cgwd
export CGW_PROFILES_DIR=$TOP/config/profiles
cd "$TMP"
mk_ca() { # name
	openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" -keyout "$1.key" -out "$1.pem" 2>/dev/null
}
mk_cert() { # name ca cn san
	openssl req -newkey rsa:2048 -nodes -subj "/CN=$3" -keyout "$1.key" -out "$1.csr" 2>/dev/null
	printf 'subjectAltName=%s\n' "$4" >"$1.ext"
	openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
		-extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
mk_ca test-ca
mk_ca other-ca
mk_cert server test-ca localhost "DNS:localhost,IP:127.0.0.1"
mk_cert client test-ca gw-tls "DNS:gw-tls"
mk_cert wrongname test-ca platform.example.net "DNS:platform.example.net"
chmod 600 ./*.key
check "test certificates made" test -s server.pem -a -s client.pem

tls_port=$(free_port)
mtls_port=$(free_port)
name_port=$(free_port)
cat >mosq.conf <<C
user root
per_listener_settings true
listener $tls_port 127.0.0.1
allow_anonymous true
cafile $TMP/test-ca.pem
certfile $TMP/server.pem
keyfile $TMP/server.key
listener $mtls_port 127.0.0.1
allow_anonymous true
cafile $TMP/test-ca.pem
certfile $TMP/server.pem
keyfile $TMP/server.key
require_certificate true
listener $name_port 127.0.0.1
allow_anonymous true
certfile $TMP/wrongname.pem
keyfile $TMP/wrongname.key
C
bg_start mosquitto -c mosq.conf >mosq.log 2>&1
wait_for 5 port_open "$tls_port" || not_ok "mosquitto with TLS starts"

run_cgwd() { # name url extra-yaml -> runs cgwd for a while, log in $1.log
	mkdir -p "state-$1"
	cat >"$1.yaml" <<Y
gateway: {id: gw-tls, site: s, state_dir: $TMP/state-$1}
control: {socket: $TMP/$1.sock}
metrics: {enabled: false}
uplinks:
  - {name: platform, type: mqtt, url: "$2", $3}
Y
	bg_start "$CGWD" -c "$1.yaml" -f 2>"$1.log"
	eval "PID_$1=\$BG_PID"
}
run_cgwd good "mqtts://localhost:$tls_port" "ca_file: $TMP/test-ca.pem"
check "right CA: connected over TLS" wait_for 15 grep -q "connected to localhost:$tls_port" good.log
check "right CA: the birth message arrives" \
	bash -c "mosquitto_sub -p $tls_port -h localhost --cafile test-ca.pem -t 'cgw/s/gw-tls/status' -C 1 -W 5 | grep -q online"

run_cgwd wrongca "mqtts://localhost:$tls_port" "ca_file: $TMP/other-ca.pem"
wait_for 15 grep -q "lost\|cannot connect\|refused" wrongca.log
sleep 1 # a few reconnect attempts
check "wrong CA: never connects" bash -c "! grep -q 'connected to' wrongca.log"

run_cgwd wronghost "mqtts://localhost:$name_port" "ca_file: $TMP/test-ca.pem"
wait_for 15 grep -q "lost\|cannot connect\|refused" wronghost.log
check "host name not in the certificate: never connects" bash -c "! grep -q 'connected to' wronghost.log"

run_cgwd mtls "mqtts://localhost:$mtls_port" "ca_file: $TMP/test-ca.pem, cert_file: $TMP/client.pem, key_file: $TMP/client.key"
check "mutual TLS with a client certificate: connected" wait_for 15 grep -q "connected to localhost:$mtls_port" mtls.log
run_cgwd nocert "mqtts://localhost:$mtls_port" "ca_file: $TMP/test-ca.pem"
check "mutual TLS without a client certificate: never connects" bash -c "sleep 2; ! grep -q 'connected to' nocert.log"

# plaintext to a remote host is refused by the configuration check
cat >plain.yaml <<Y
gateway: {id: gw-tls, site: s, state_dir: $TMP}
uplinks: [{name: platform, type: mqtt, url: "mqtt://192.0.2.1:1883"}]
Y
"$CGWD" --check-config -c plain.yaml >/dev/null 2>plain.err
check "plaintext to a remote host: configuration error, exit 2" bash -c "[ $? -eq 2 ] && grep -q 'plaintext to 192.0.2.1' plain.err"
# a world-readable key is refused
chmod 644 client.key
cat >badkey.yaml <<Y
gateway: {id: gw-tls, site: s, state_dir: $TMP}
uplinks: [{name: platform, type: mqtt, url: "mqtts://localhost:$mtls_port", cert_file: $TMP/client.pem, key_file: $TMP/client.key}]
Y
"$CGWD" --check-config -c badkey.yaml >/dev/null 2>badkey.err
check "a key readable by others is refused with a clear error" grep -q "key_file: .* is readable by others (mode 0644); fix: chown root:cgw .* && chmod 0640 " badkey.err
for f in wrongca wronghost nocert; do diag "$f: $(grep -m1 "lost\|cannot\|refused" $f.log)"; done
done_testing
