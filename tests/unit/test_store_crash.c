/*
 * test_store_crash.c - SIGKILL the writer at random moments.
 *
 * A forked child opens the store and enqueues alarms, events, telemetry and
 * latest values in a loop (running maintenance now and then), and writes
 * each seq to a pipe only after the store said it is committed. It acks
 * (deletes) its events once committed, so rows at the top of the table go
 * away and a seq that was not AUTOINCREMENT would come back; events are
 * reported with EVENT_TAG and checked for reuse only. The parent kills it
 * with SIGKILL after a random delay, many times over the same file. After
 * each kill: the store opens, PRAGMA integrity_check is "ok", every seq the
 * child reported is in the outbox (nothing acks them), and every seq handed
 * out in a run is greater than any seq that existed before it (never
 * reused). Half the runs use synchronous=FULL, half NORMAL.
 *
 * CGW_CRASH_SEED=N reproduces a run; the seed is printed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "store.h"

#define RUNS 60
#define MAX_DELAY_US 30000
#define CHILD_MAX_MSGS 200000
#define REPORT_MAX 512 /* seqs per pipe write: 4 KiB, written atomically */
#define EVENT_TAG ((uint64_t)1 << 63)
#define SEQ(x) ((x) & ~EVENT_TAG)

_Noreturn static void child(const char *path, bool full, unsigned seed, int fd)
{
	struct store *s = NULL;
	char err[256];
	struct store_opts o = {.sync_full = full, .batch_rows = 8 + seed % 64};
	if (store_open(&s, path, &o, err, sizeof(err)) != 0) {
		fprintf(stderr, "child: %s\n", err);
		_exit(3);
	}
	int64_t up = 0;
	if (store_uplink_register(s, "platform", (1u << CGW_LANE_COUNT) - 1, &up) != 0)
		_exit(4);
	static const uint64_t ready = 0;
	if (write(fd, &ready, sizeof(ready)) != sizeof(ready))
		_exit(9);
	static uint64_t pend[REPORT_MAX];
	size_t np = 0;
	char payload[160];
	for (int i = 0; i < CHILD_MAX_MSGS; i++) {
		unsigned r = (unsigned)rand_r(&seed);
		struct store_msg m = {.lane = r % 8 == 0 ? CGW_LANE_ALARM :
					      r % 8 == 1 ? CGW_LANE_EVENT :
							   CGW_LANE_TELEMETRY,
				      .device = "dev",
				      .topic = "device/dev/x",
				      .ts_ms = i,
				      .payload = payload};
		snprintf(payload, sizeof(payload), "{\"n\":%d,\"pad\":\"%.*s\"}", i, (int)(r % 100),
			 "................................................................."
			 "...................................");
		uint64_t seq = 0;
		bool committed = false;
		if (store_enqueue(s, &m, cgw_mono_ms(), &seq, &committed) != 0)
			_exit(5);
		pend[np++] = m.lane == CGW_LANE_EVENT ? seq | EVENT_TAG : seq;
		if (r % 5 == 0) {
			struct cgw_value v = {.type = CGW_V_INT, .i = i};
			if (store_put_latest(s, "dev", "n", &v, CGW_Q_GOOD, i, cgw_mono_ms()) != 0)
				_exit(6);
		}
		if (!committed && (np == REPORT_MAX || r % 97 == 0)) {
			/* the core's timer */
			if (store_flush(s) != 0)
				_exit(7);
			committed = true;
		}
		if (r % 1009 == 0 && store_maintain(s, i, NULL) != 0)
			_exit(8);
		if (committed) {
			if (write(fd, pend, np * sizeof(pend[0])) !=
			    (ssize_t)(np * sizeof(pend[0])))
				_exit(9);
			for (size_t k = 0; k < np; k++)
				if ((pend[k] & EVENT_TAG) &&
				    store_ack(s, up, CGW_LANE_EVENT, pend[k] & ~EVENT_TAG,
					      STORE_ACK_OK, -1, NULL, 0) != 0)
					_exit(10);
			np = 0;
		}
	}
	store_close(s);
	_exit(0);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

struct seqbuf {
	uint64_t *v;
	size_t n, cap;
};

/* Appends what one read() gets (dropping the ready marker, 0); false at EOF. */
static bool read_seqs(int fd, struct seqbuf *b)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 1 << 16;
		b->v = realloc(b->v, b->cap * sizeof(*b->v));
		assert_non_null(b->v);
	}
	ssize_t n = read(fd, b->v + b->n, (b->cap - b->n) * sizeof(*b->v));
	assert_true(n >= 0);
	assert_int_equal(n % (ssize_t)sizeof(*b->v), 0);
	size_t w = b->n;
	for (size_t k = 0; k < (size_t)n / sizeof(*b->v); k++)
		if (b->v[b->n + k] != 0)
			b->v[w++] = b->v[b->n + k];
	b->n = w;
	return n > 0;
}

static void test_sigkill_loop(void **state)
{
	(void)state;
	char dir[] = "/tmp/cgw-crash-XXXXXX", path[64];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/store.db", dir);
	const char *env = getenv("CGW_CRASH_SEED");
	unsigned seed = env ? (unsigned)strtoul(env, NULL, 10) : (unsigned)time(NULL);
	print_message("# seed %u (CGW_CRASH_SEED)\n", seed);

	struct seqbuf b = {0};
	uint64_t floor_seq = 0; /* every new seq must be above this */
	int runs_reporting = 0;

	for (int run = 0; run < RUNS; run++) {
		int p[2];
		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		fcntl(p[1], F_SETPIPE_SZ, 1 << 20);
		unsigned cseed = (unsigned)rand_r(&seed);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			close(p[0]);
			child(path, run % 2 == 0, cseed, p[1]);
		}
		close(p[1]);
		/* A random moment: mostly counted from the child's first commit
		 * (so that a slow run, e.g. under valgrind, still gets that far),
		 * every fourth run from the fork (inside store_open()). */
		size_t first = b.n;
		while (run % 4 != 3 && b.n == first) {
			struct pollfd pfd = {.fd = p[0], .events = POLLIN};
			assert_int_equal(poll(&pfd, 1, 30000), 1);
			assert_true(read_seqs(p[0], &b));
		}
		struct timespec d = {0, (long)(rand_r(&seed) % MAX_DELAY_US) * 1000};
		nanosleep(&d, NULL);
		kill(pid, SIGKILL);
		int status = 0;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
			fail_msg("run %d: child ended by itself (status 0x%x)", run, status);

		while (read_seqs(p[0], &b))
			;
		close(p[0]);
		uint64_t *seqs = b.v;
		size_t total = b.n;
		if (total > first)
			runs_reporting++;
		for (size_t i = first; i < total; i++) {
			if (SEQ(seqs[i]) <= floor_seq)
				fail_msg("run %d: seq %" PRIu64 " reused (<= %" PRIu64 ")", run,
					 SEQ(seqs[i]), floor_seq);
			if (i > first && SEQ(seqs[i]) <= SEQ(seqs[i - 1]))
				fail_msg("run %d: seq %" PRIu64 " after %" PRIu64, run,
					 SEQ(seqs[i]), SEQ(seqs[i - 1]));
		}

		/* The store opens (recovering the WAL) ... */
		struct store *s = NULL;
		char err[256];
		struct store_opts po = {.sync_full = run % 2 == 0};
		if (store_open(&s, path, &po, err, sizeof(err)) != 0)
			fail_msg("run %d: reopen: %s", run, err);
		/* ... is intact, and holds every reported seq. */
		sqlite3 *db = NULL;
		sqlite3_stmt *st = NULL;
		assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL),
				 SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_string_equal((const char *)sqlite3_column_text(st, 0), "ok");
		sqlite3_finalize(st);
		/* one read transaction: not a lock round trip per lookup */
		assert_int_equal(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
		assert_int_equal(sqlite3_prepare_v2(db, "SELECT 1 FROM msg WHERE seq = ?1", -1, &st,
						    NULL),
				 SQLITE_OK);
		for (size_t i = 0; i < total; i++) {
			if (seqs[i] & EVENT_TAG)
				continue; /* acked: may be gone */
			sqlite3_bind_int64(st, 1, (int64_t)seqs[i]);
			if (sqlite3_step(st) != SQLITE_ROW)
				fail_msg("run %d: committed seq %" PRIu64 " is missing", run,
					 seqs[i]);
			sqlite3_reset(st);
		}
		sqlite3_finalize(st);
		/* Whatever exists now, reported or not, is below every later seq. */
		assert_int_equal(
			sqlite3_prepare_v2(db,
					   "SELECT max(coalesce((SELECT max(seq) FROM msg), 0),"
					   " coalesce((SELECT seq FROM sqlite_sequence"
					   " WHERE name = 'msg'), 0))",
					   -1, &st, NULL),
			SQLITE_OK);
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		uint64_t hi = (uint64_t)sqlite3_column_int64(st, 0);
		sqlite3_finalize(st);
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		sqlite3_close(db);
		if (total > 0)
			assert_true(hi >= SEQ(seqs[total - 1]));
		floor_seq = hi > floor_seq ? hi : floor_seq;
		struct store_stats sst;
		assert_int_equal(store_stats(s, &sst), 0);
		assert_true(sst.seq_high >= floor_seq);
		store_close(s);
	}
	uint64_t *seqs = b.v;
	size_t total = b.n;
	print_message("# %d runs, %d reported commits, %zu committed seqs checked\n", RUNS,
		      runs_reporting, total);
	/* Not vacuous: (at least) the runs that waited for it committed. */
	assert_true(runs_reporting >= RUNS * 3 / 4);
	for (size_t i = 0; i < total; i++)
		seqs[i] = SEQ(seqs[i]);
	qsort(seqs, total, sizeof(*seqs), cmp_u64);
	for (size_t i = 1; i < total; i++)
		assert_true(seqs[i] != seqs[i - 1]);
	free(seqs);

	char p[96];
	static const char *const sfx[] = {"", "-wal", "-shm"};
	for (int i = 0; i < 3; i++) {
		snprintf(p, sizeof(p), "%s%s", path, sfx[i]);
		unlink(p);
	}
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sigkill_loop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
