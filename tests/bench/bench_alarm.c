/*
 * bench_alarm: the cost of alarm_on_reading() on a large gateway.
 *
 * 2000 devices of one generated profile with 10 points and 20 rules (above
 * and below with deadbands, a third of them with on/off delays): 20k points,
 * 40k rules. Readings hit random points with values that mostly stay normal
 * and now and then cross a threshold, with the clock advancing so delays
 * complete through alarm_tick(). The reference, in the same run over the same
 * readings, is a plain loop that only compares each value with one threshold
 * per rule; the ratio says what the engine's bookkeeping costs on top.
 *
 *   build/bench/bench_alarm [READINGS]      (default 4000000; exits 1 if the
 *                                           1 us/reading target is missed)
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alarm.h"
#include "config.h"

#define N_DEV 2000
#define N_PT 10
#define N_RULE (2 * N_PT)

static uint64_t changes, sent;

static void on_emit(void *arg, const struct alarm_change *c)
{
	(void)arg;
	changes++;
	sent += !c->suppressed;
}

static double now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 16);
}

static int write_profile(const char *dir)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/bp.yaml", dir);
	f = fopen(path, "w");
	if (!f)
		return -errno;
	fprintf(f, "profile: bp\nclass: service\npoints:\n");
	for (int p = 0; p < N_PT; p++)
		fprintf(f, "  - {name: p%d, topic: s, json: p%d, type: number, unit: C}\n", p, p);
	fprintf(f, "alarms:\n");
	for (int p = 0; p < N_PT; p++) {
		fprintf(f,
			"  - {name: hi%d, point: p%d, above: 80, deadband: 2, severity: major%s,"
			" message: '{name} {alarm} {value}{unit} {location.building}'}\n",
			p, p, p % 3 == 0 ? ", on_delay: 2s" : "");
		fprintf(f, "  - {name: lo%d, point: p%d, below: 20, deadband: 2, severity: minor%s}\n",
			p, p, p % 3 == 1 ? ", off_delay: 2s" : "");
	}
	return fclose(f) ? -errno : 0;
}

static struct cgw_config *load(const char *dir)
{
	size_t cap = 4096 + (size_t)N_DEV * 160, len = 0;
	char *t = malloc(cap);
	struct cfg_errors errs = {0};
	struct cgw_config *cfg = NULL;

	if (!t)
		return NULL;
	len += (size_t)snprintf(t + len, cap - len,
				"gateway: {id: gw, site: s}\nprofile_dirs: [%s]\n"
				"buses: [{name: mq, type: mqtt, url: 'mqtt://127.0.0.1:1883'}]\n"
				"devices:\n",
				dir);
	for (int d = 0; d < N_DEV; d++)
		len += (size_t)snprintf(t + len, cap - len,
					"  - {id: dev-%04d, name: 设备%d, profile: bp, bus: mq, "
					"topic: b/%d, location: {building: '%d'}}\n",
					d, d, d, d % 20);
	config_load_string("bench.yaml", t, len, &cfg, &errs);
	for (size_t i = 0; i < errs.n && i < 5; i++)
		fprintf(stderr, "%s\n", errs.v[i]);
	cfg_errors_free(&errs);
	free(t);
	return cfg;
}

struct reading {
	uint32_t dev, pt;
	double v;
};

int main(int argc, char **argv)
{
	size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 4000000;
	char dir[] = "/tmp/cgw-bench-alarm-XXXXXX";
	struct cgw_config *cfg = NULL;
	struct alarm_engine *e = NULL;
	struct reading *rs = NULL;
	double *hi = NULL, *lo = NULL;
	double t0, best_eng = 1e300, best_ref = 1e300, t_load, t_new;
	volatile uint64_t sink = 0;
	int rc = 1;

	if (!n || !mkdtemp(dir))
		return 1;
	if (write_profile(dir) < 0)
		goto out;
	t0 = now_ns();
	cfg = load(dir);
	t_load = now_ns() - t0;
	if (!cfg) {
		fprintf(stderr, "bench_alarm: configuration failed\n");
		goto out;
	}
	rs = malloc(n * sizeof(*rs));
	hi = malloc(N_DEV * N_PT * sizeof(double));
	lo = malloc(N_DEV * N_PT * sizeof(double));
	if (!rs || !hi || !lo)
		goto out;
	for (size_t i = 0; i < N_DEV * N_PT; i++) {
		hi[i] = 80;
		lo[i] = 20;
	}
	/* mostly normal (30..70); 1 in 200 readings out of range either way */
	for (size_t i = 0; i < n; i++) {
		uint32_t r = rnd();
		rs[i].dev = r % N_DEV;
		rs[i].pt = (r / N_DEV) % N_PT;
		uint32_t k = rnd() % 400;
		rs[i].v = k == 0 ? 90.0 : k == 1 ? 10.0 : 30.0 + (double)(rnd() % 4000) / 100.0;
	}

	for (int round = 0; round < 3; round++) {
		double dt;

		alarm_engine_free(e);
		e = NULL;
		t0 = now_ns();
		if (alarm_engine_new(cfg, on_emit, NULL, &e) < 0)
			goto out;
		t_new = now_ns() - t0;
		changes = sent = 0;
		/* 20k readings per second of monotonic time: every point once a second */
		t0 = now_ns();
		for (size_t i = 0; i < n; i++) {
			int64_t mono = (int64_t)(i / 20);
			struct cgw_value v = {.type = CGW_V_DOUBLE, .d = rs[i].v};
			if ((i & 1023) == 0) {
				int64_t d = alarm_next_deadline(e);
				if (d >= 0 && d <= mono)
					alarm_tick(e, 1700000000000 + mono, mono);
			}
			alarm_on_reading(e, rs[i].dev, rs[i].pt, &v, CGW_Q_GOOD,
					 1700000000000 + mono, mono);
		}
		dt = (now_ns() - t0) / (double)n;
		if (dt < best_eng)
			best_eng = dt;

		/* the reference: one compare per rule, through the same indexing */
		uint64_t cnt = 0;
		t0 = now_ns();
		for (size_t i = 0; i < n; i++) {
			size_t b = (size_t)rs[i].dev * N_PT + rs[i].pt;
			cnt += rs[i].v > hi[b];
			cnt += rs[i].v < lo[b];
		}
		dt = (now_ns() - t0) / (double)n;
		sink += cnt;
		if (dt < best_ref)
			best_ref = dt;
	}
	printf("bench_alarm: %d devices, %d points, %d rules, %zu readings (best of 3)\n", N_DEV,
	       N_DEV * N_PT, N_DEV * N_RULE, n);
	printf("  config load %.1f ms, alarm_engine_new %.2f ms\n", t_load / 1e6, t_new / 1e6);
	printf("  alarm changes %llu (%.3f%% of readings; %llu sent), active at end %zu\n",
	       (unsigned long long)changes, 100.0 * (double)changes / (double)n,
	       (unsigned long long)sent, alarm_active_count(e, -1));
	printf("alarm_on_reading: %.1f ns/reading\n", best_eng);
	printf("reference (one compare per rule): %.1f ns/reading\n", best_ref);
	printf("ratio: %.1fx\n", best_eng / best_ref);
	printf("target: alarm_on_reading <= 1000 ns/reading: %s\n",
	       best_eng <= 1000 ? "met" : "MISSED");
	/* the reference must have counted something, and the target be met */
	rc = sink == 0 || best_eng > 1000;
out:
	alarm_engine_free(e);
	config_free(cfg);
	free(rs);
	free(hi);
	free(lo);
	{
		char path[256];
		snprintf(path, sizeof(path), "%s/bp.yaml", dir);
		unlink(path);
		rmdir(dir);
	}
	return rc;
}
