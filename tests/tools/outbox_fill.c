/*
 * outbox_fill - put N telemetry messages for D devices into a cgw store, as
 * the core would, so that a test can measure and check delivery alone.
 *
 *   outbox_fill STORE_PATH UPLINK N DEVICES [AGE_MS]
 *
 * Message k (1-based) goes to device k % DEVICES, with payload
 * {"ts":..,"device":"dev-J","values":{"k":k}} (a telemetry message as the
 * contract has it, schema/telemetry.json); AGE_MS makes them that old.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

int main(int argc, char **argv)
{
	struct store *s;
	char err[256], dev[32], topic[64], payload[160];
	int64_t id;
	long n, ndev, age = 0;

	if (argc < 5) {
		fprintf(stderr, "usage: outbox_fill STORE UPLINK N DEVICES [AGE_MS]\n");
		return 2;
	}
	n = atol(argv[3]);
	ndev = atol(argv[4]);
	if (argc > 5)
		age = atol(argv[5]);
	if (store_open(&s, argv[1], NULL, err, sizeof(err)) < 0) {
		fprintf(stderr, "outbox_fill: %s\n", err);
		return 1;
	}
	if (store_uplink_register(s, argv[2], 0xf, &id) < 0) {
		fprintf(stderr, "outbox_fill: %s\n", store_errmsg(s));
		return 1;
	}
	int64_t now = cgw_now_ms() - age;
	for (long k = 1; k <= n; k++) {
		snprintf(dev, sizeof(dev), "dev-%ld", k % ndev);
		snprintf(topic, sizeof(topic), "device/%s/telemetry", dev);
		snprintf(payload, sizeof(payload),
			 "{\"ts\":%lld,\"device\":\"%s\",\"values\":{\"k\":%ld}}", (long long)now,
			 dev, k);
		struct store_msg m = {.lane = CGW_LANE_TELEMETRY,
				      .device = dev,
				      .topic = topic,
				      .ts_ms = now,
				      .payload = payload};
		uint64_t seq;
		if (store_enqueue(s, &m, cgw_mono_ms(), &seq, NULL) < 0) {
			fprintf(stderr, "outbox_fill: %s\n", store_errmsg(s));
			return 1;
		}
	}
	store_close(s);
	return 0;
}
