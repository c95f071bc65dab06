/*
 * mq_flood - publish N messages of SIZE bytes at QoS 1 with a window of
 * unacknowledged messages, as fast as the broker acknowledges them. The
 * reference publisher for the uplink benchmark.
 *
 *   mq_flood PORT TOPIC N SIZE [WINDOW [PAYLOAD]]
 *
 * PAYLOAD (e.g. a device's JSON) is sent instead of SIZE bytes of 'x'; a
 * "%d" in it becomes the message's number modulo 100, so that every message
 * is a change (a filler that the gateway stores, not one it deduplicates).
 */
#include <mosquitto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static long inflight, acked;
static int connected;

static void on_connect(struct mosquitto *m, void *arg, int rc)
{
	(void)m;
	(void)arg;
	pthread_mutex_lock(&mu);
	connected = rc == 0 ? 1 : -1;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

static void on_publish(struct mosquitto *m, void *arg, int mid)
{
	(void)m;
	(void)arg;
	(void)mid;
	pthread_mutex_lock(&mu);
	inflight--;
	acked++;
	pthread_cond_broadcast(&cv);
	pthread_mutex_unlock(&mu);
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: mq_flood PORT TOPIC N SIZE [WINDOW [PAYLOAD]]\n");
		return 2;
	}
	int port = atoi(argv[1]);
	long n = atol(argv[3]), size = atol(argv[4]), window = argc > 5 ? atol(argv[5]) : 500;
	if (argc > 6)
		size = (long)strlen(argv[6]);
	const char *fmt = argc > 6 && strstr(argv[6], "%d") ? argv[6] : NULL;
	char *payload = malloc((size_t)size + 16);
	struct mosquitto *m;

	if (!payload)
		return 1;
	if (argc > 6)
		memcpy(payload, argv[6], (size_t)size);
	else
		memset(payload, 'x', (size_t)size);
	mosquitto_lib_init();
	m = mosquitto_new(NULL, true, NULL);
	mosquitto_int_option(m, MOSQ_OPT_SEND_MAXIMUM, 65535);
	mosquitto_connect_callback_set(m, on_connect);
	mosquitto_publish_callback_set(m, on_publish);
	if (mosquitto_connect(m, "127.0.0.1", port, 60) != MOSQ_ERR_SUCCESS ||
	    mosquitto_loop_start(m) != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "mq_flood: cannot connect\n");
		return 1;
	}
	pthread_mutex_lock(&mu);
	while (!connected)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&mu);
		while (inflight >= window)
			pthread_cond_wait(&cv, &mu);
		inflight++;
		pthread_mutex_unlock(&mu);
		if (fmt) {
			const char *at = strstr(fmt, "%d");
			size = snprintf(payload, (size_t)size + 16, "%.*s%d%s", (int)(at - fmt),
					fmt, (int)(i % 100), at + 2);
		}
		if (mosquitto_publish(m, NULL, argv[2], (int)size, payload, 1, false) !=
		    MOSQ_ERR_SUCCESS) {
			fprintf(stderr, "mq_flood: publish failed\n");
			return 1;
		}
	}
	pthread_mutex_lock(&mu);
	while (acked < n)
		pthread_cond_wait(&cv, &mu);
	pthread_mutex_unlock(&mu);
	mosquitto_disconnect(m);
	mosquitto_loop_stop(m, false);
	mosquitto_destroy(m);
	mosquitto_lib_cleanup();
	free(payload);
	return 0;
}
