/*
 * sim_scenario.c - plays a scenario file: simulator commands on a timeline
 * (one-shot `at:` steps and periodic `every:` steps), optionally repeated,
 * in its own thread.
 */
#include <errno.h>
#include <libfyaml.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "sim_ext.h"

struct step {
	int64_t at_ms;    /* -1 for periodic steps */
	int64_t every_ms; /* 0 for one-shot steps */
	char *line;
	char *say;
	int64_t next_ms;
};

struct sim_scenario {
	struct step *steps;
	size_t n;
	int64_t repeat_ms;
	double speed;
	sim_exec_fn exec;
	void *arg;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop;
	char *name;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char *get_str(struct fy_node *map, const char *key)
{
	struct fy_node *n = fy_node_mapping_lookup_by_string(map, key, FY_NT);
	size_t len;
	const char *s = n && fy_node_is_scalar(n) ? fy_node_get_scalar(n, &len) : NULL;
	return s ? strndup(s, len) : NULL;
}

static int get_duration(struct fy_node *map, const char *key, int64_t *ms)
{
	char *s = get_str(map, key);
	int r;

	if (!s)
		return -ENOENT;
	r = cfg_parse_duration(s, ms);
	free(s);
	return r;
}

static void *run(void *arg)
{
	struct sim_scenario *s = arg;
	int64_t start = mono_ms();

	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < s->n; i++)
		s->steps[i].next_ms = s->steps[i].at_ms >= 0 ? s->steps[i].at_ms : 0;
	while (!s->stop) {
		int64_t now = (int64_t)((double)(mono_ms() - start) * s->speed);
		int64_t next = -1;
		for (size_t i = 0; i < s->n; i++) {
			struct step *st = &s->steps[i];
			if (st->next_ms < 0)
				continue;
			if (st->next_ms <= now) {
				pthread_mutex_unlock(&s->mu);
				if (st->say)
					log_notice("scenario", "%s", st->say);
				s->exec(s->arg, st->line);
				pthread_mutex_lock(&s->mu);
				st->next_ms = st->every_ms ? st->next_ms + st->every_ms : -1;
			}
			if (st->next_ms >= 0 && (next < 0 || st->next_ms < next))
				next = st->next_ms;
		}
		if (s->repeat_ms > 0 && now >= s->repeat_ms) {
			/* start over: one-shot steps again, periodic ones keep going */
			start = mono_ms();
			for (size_t i = 0; i < s->n; i++)
				s->steps[i].next_ms = s->steps[i].at_ms >= 0 ? s->steps[i].at_ms :
									       0;
			log_notice("scenario", "%s: starting over", s->name);
			continue;
		}
		if (s->repeat_ms > 0 && (next < 0 || next > s->repeat_ms))
			next = s->repeat_ms;
		if (next < 0) {
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		int64_t wait_real = (int64_t)((double)(next - now) / s->speed);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += wait_real / 1000;
		ts.tv_nsec += (wait_real % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&s->cv, &s->mu, &ts);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static void scenario_free(struct sim_scenario *s)
{
	for (size_t i = 0; i < s->n; i++) {
		free(s->steps[i].line);
		free(s->steps[i].say);
	}
	free(s->steps);
	free(s->name);
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	free(s);
}

int sim_scenario_start(const char *path, double speed, sim_exec_fn exec, void *arg,
		       struct sim_scenario **out)
{
	struct fy_document *doc = fy_document_build_from_file(NULL, path);
	struct fy_node *root, *steps, *e;
	struct sim_scenario *s;
	void *it = NULL;
	int r = -EINVAL;

	*out = NULL;
	if (!doc) {
		log_err("scenario", "%s: cannot read or parse", path);
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		fy_document_destroy(doc);
		return -ENOMEM;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->speed = speed > 0 ? speed : 1;
	s->exec = exec;
	s->arg = arg;
	root = fy_document_root(doc);
	if (!root || !fy_node_is_mapping(root))
		goto bad;
	s->name = get_str(root, "scenario");
	get_duration(root, "repeat", &s->repeat_ms);
	steps = fy_node_mapping_lookup_by_string(root, "steps", FY_NT);
	if (!steps || !fy_node_is_sequence(steps))
		goto bad;
	while ((e = fy_node_sequence_iterate(steps, &it))) {
		struct step st = {.at_ms = -1};
		struct step *ns;
		if (!fy_node_is_mapping(e))
			goto bad;
		st.line = get_str(e, "do");
		st.say = get_str(e, "say");
		if (get_duration(e, "at", &st.at_ms) < 0)
			st.at_ms = -1;
		if (get_duration(e, "every", &st.every_ms) < 0)
			st.every_ms = 0;
		if (!st.line || (st.at_ms < 0 && st.every_ms <= 0)) {
			log_err("scenario", "%s: step %zu needs do: and at: or every:", path,
				s->n + 1);
			free(st.line);
			free(st.say);
			goto bad;
		}
		ns = realloc(s->steps, (s->n + 1) * sizeof(*ns));
		if (!ns) {
			free(st.line);
			free(st.say);
			r = -ENOMEM;
			goto bad;
		}
		s->steps = ns;
		s->steps[s->n++] = st;
	}
	fy_document_destroy(doc);
	if (!s->name)
		s->name = strdup(path);
	r = pthread_create(&s->thread, NULL, run, s);
	if (r) {
		scenario_free(s);
		return -r;
	}
	log_notice("scenario", "%s: %zu steps%s", s->name, s->n, s->repeat_ms ? ", repeating" : "");
	*out = s;
	return 0;
bad:
	if (r == -EINVAL)
		log_err("scenario", "%s: expected scenario:, steps: [{at|every, do}]", path);
	fy_document_destroy(doc);
	scenario_free(s);
	return r;
}

void sim_scenario_stop(struct sim_scenario *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->stop = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	scenario_free(s);
}
