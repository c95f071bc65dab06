/*
 * mqtt_ingest_config.c - the `mqtt` bus type: its keys and checks (see
 * mqtt_ingest.h and config_keys.h).
 */
#include "mqtt_ingest.h"

#include <stdlib.h>
#include <string.h>

#define O(f) CFG_OFF(struct mqtt_bus_opts, f)

static const struct cfg_key mqtt_keys[] = {
	{"url", K_STR, O(url), NULL, 0, 0, 0, NULL, NULL,
	 "broker URL, mqtt://host:port or mqtts://host:port"},
	{"client_id", K_STR, O(client_id), NULL, 0, 0, 0, NULL, NULL,
	 "client id (default: {gateway}-{bus}); stable, for the persistent session"},
	{"clean_session", K_BOOL, O(clean_session), "false", 0, 0, 0, NULL, NULL,
	 "true: the broker forgets what devices sent while cgwd was away"},
	{"username", K_STR, O(username), NULL, 0, 0, 0, NULL, NULL, "user name"},
	{"password_file", K_STR, O(password_file), NULL, KF_SECRET, 0, 0, NULL, NULL,
	 "file holding the password (0640 root:cgw at most), or credential:NAME"},
	{"ca_file", K_STR, O(ca_file), NULL, KF_FILE, 0, 0, NULL, NULL, "CA bundle for mqtts://"},
	{"cert_file", K_STR, O(cert_file), NULL, KF_FILE, 0, 0, NULL, NULL, "client certificate"},
	{"key_file", K_STR, O(key_file), NULL, KF_SECRET, 0, 0, NULL, NULL,
	 "client key (0640 root:cgw at most), or credential:NAME"},
	{"insecure", K_BOOL, O(insecure), "false", 0, 0, 0, NULL, NULL,
	 "allow plaintext to a broker that is not loopback"},
	{"stale_after", K_DURATION, O(stale_after_ms), "5m", 0, 1000, 0x7fffffff, NULL, NULL,
	 "a device that sent nothing this long is offline"},
	{"max_payload", K_SIZE, O(max_payload), "64KB", 0, 16, 16 << 20, NULL, NULL,
	 "larger payloads are quarantined"},
};

const struct mqtt_bus_opts *mqtt_bus_opts(const struct cfg_bus *b)
{
	return b && b->kind == &mqtt_bus_type ? b->opts : NULL;
}

/* The url says where to connect. */
static int check(struct cfg_loader *ld, struct cfg_bus *b)
{
	struct mqtt_bus_opts *m = b->opts;
	bool http = false;

	/* `url:` with no value is a null (said already), not a url */
	if (m->url && (cfg_parse_url(m->url, &m->host, &m->port, &m->tls, &http) < 0 || http)) {
		cfg_bus_error(ld, b, "url",
			      "url '%s' is not mqtt://host[:port] or mqtts://host[:port]", m->url);
		return 1;
	}
	return 0;
}

static void device_defaults(const struct cfg_bus *b, struct cfg_device *d)
{
	const struct mqtt_bus_opts *m = b->opts;

	if (d->stale_after_ms < 0)
		d->stale_after_ms = m->stale_after_ms;
}

static const char *where(const struct cfg_bus *b)
{
	return ((const struct mqtt_bus_opts *)b->opts)->url;
}

static void opts_free(void *opts)
{
	free(((struct mqtt_bus_opts *)opts)->host);
}

/* host, port and tls derive from the url, which the table compares */

const struct cfg_bus_type mqtt_bus_type = {
	.name = "mqtt",
	.help = "an MQTT broker on the LAN that devices publish JSON to",
	.keys = mqtt_keys,
	.n_keys = sizeof(mqtt_keys) / sizeof(mqtt_keys[0]),
	.opts_size = sizeof(struct mqtt_bus_opts),
	.required = "url",
	.devices = CFG_DEVICES_MQTT,
	.ops = &mqtt_ingest_ops,
	.check = check,
	.device_defaults = device_defaults,
	.where = where,
	.free = opts_free,
};
