/*
 * sim_mqtt.c - the simulator's MQTT devices: one libmosquitto client per
 * mqtt bus (its own thread), publishing what the commands ask for on the
 * device's topics, as a parcel locker or an access controller would.
 */
#include <ctype.h>
#include <errno.h>
#include <mosquitto.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mqtt_ingest.h"
#include "sim_ext.h"

struct sim_bus {
	struct mosquitto *mosq;
	const struct cfg_bus *cfg;
	char host[256];
	int port;
};

struct sim_mqtt {
	const struct cgw_config *cfg;
	struct sim_bus *bus; /* indexed like cfg->buses; mosq NULL if not mqtt */
};

int sim_mqtt_start(const struct cgw_config *cfg, struct sim_mqtt **out)
{
	struct sim_mqtt *m;
	bool any = false;

	*out = NULL;
	for (size_t i = 0; i < cfg->n_buses; i++)
		any |= mqtt_bus_opts(&cfg->buses[i]) && cfg->buses[i].n_devices > 0;
	if (!any)
		return 0;
	m = calloc(1, sizeof(*m));
	if (!m || !(m->bus = calloc(cfg->n_buses, sizeof(*m->bus)))) {
		free(m);
		return -ENOMEM;
	}
	m->cfg = cfg;
	mosquitto_lib_init();
	for (size_t i = 0; i < cfg->n_buses; i++) {
		struct sim_bus *b = &m->bus[i];
		if (!mqtt_bus_opts(&cfg->buses[i]) || !cfg->buses[i].n_devices)
			continue;
		b->cfg = &cfg->buses[i];
		snprintf(b->host, sizeof(b->host), "%s", mqtt_bus_opts(b->cfg)->host);
		b->port = (int)mqtt_bus_opts(b->cfg)->port;
		b->mosq = mosquitto_new(NULL, true, NULL);
		if (!b->mosq)
			continue;
		/* connect_async + loop_start: the loop thread keeps reconnecting
		 * while the broker is away */
		mosquitto_reconnect_delay_set(b->mosq, 1, 10, false);
		mosquitto_connect_async(b->mosq, b->host, b->port, 30);
		mosquitto_loop_start(b->mosq);
		log_info("sim", "bus %s: publishing to %s:%d", b->cfg->name, b->host, b->port);
	}
	*out = m;
	return 0;
}

void sim_mqtt_stop(struct sim_mqtt *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->cfg->n_buses; i++) {
		if (!m->bus[i].mosq)
			continue;
		mosquitto_disconnect(m->bus[i].mosq);
		mosquitto_loop_stop(m->bus[i].mosq, false);
		mosquitto_destroy(m->bus[i].mosq);
	}
	mosquitto_lib_cleanup();
	free(m->bus);
	free(m);
}

/* The rest of `line` after `skip` whitespace-separated words. */
static const char *rest_after(const char *line, int skip)
{
	const char *p = line;

	for (int i = 0; i < skip; i++) {
		while (*p && isspace((unsigned char)*p))
			p++;
		while (*p && !isspace((unsigned char)*p))
			p++;
	}
	while (*p && isspace((unsigned char)*p))
		p++;
	return p;
}

int sim_mqtt_command(struct sim_mqtt *m, int argc, char **argv, const char *line, FILE *out)
{
	bool raw;
	long dev;
	struct sim_bus *b;
	char topic[512];
	unsigned char *bytes = NULL;
	const void *payload;
	size_t len;
	int rc;

	if (!m || argc < 1)
		return -ENOENT;
	raw = !strcmp(argv[0], "publish-raw");
	if (!raw && strcmp(argv[0], "publish"))
		return -ENOENT;
	if (argc < 3) {
		fprintf(out, "error: %s DEVICE SUBTOPIC PAYLOAD\n", argv[0]);
		return 0;
	}
	dev = cfg_find_device(m->cfg, argv[1]);
	if (dev < 0 || !m->bus[m->cfg->devices[dev].bus].mosq)
		return -ENOENT;
	b = &m->bus[m->cfg->devices[dev].bus];
	snprintf(topic, sizeof(topic), "%s/%s", m->cfg->devices[dev].topic, argv[2]);
	payload = rest_after(line, 3);
	len = strlen(payload);
	if (raw) {
		const char *hex = payload;
		len = strlen(hex) / 2;
		bytes = malloc(len ? len : 1);
		if (!bytes) {
			fputs("error: out of memory\n", out);
			return 0;
		}
		for (size_t i = 0; i < len; i++) {
			unsigned v;
			if (sscanf(hex + 2 * i, "%2x", &v) != 1) {
				free(bytes);
				fputs("error: payload is not hex\n", out);
				return 0;
			}
			bytes[i] = (unsigned char)v;
		}
		payload = bytes;
	}
	rc = mosquitto_publish(b->mosq, NULL, topic, (int)len, payload, 1, false);
	free(bytes);
	if (rc != MOSQ_ERR_SUCCESS)
		fprintf(out, "error: %s\n", mosquitto_strerror(rc));
	else
		fputs("ok\n", out);
	return 0;
}
