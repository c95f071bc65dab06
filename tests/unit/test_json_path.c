/*
 * json_path: payload parsing with its bounds, path extraction and the
 * conversions to point types (json_path.h states the rules tested here).
 * Payloads are heap blocks of exactly their length (no NUL after them), so
 * a read past the end is caught by ASan/valgrind.
 */
/* cmocka.h needs these first, in this order */
/* clang-format off */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */

#include "json_path.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXP 65536

static int parse_len(const void *p, size_t len, size_t max, json_t **out)
{
	char *copy = malloc(len ? len : 1);
	char why[160];
	int r;

	assert_non_null(copy);
	memcpy(copy, p, len);
	r = jp_parse(copy, len, max, out, why, sizeof(why));
	if (r < 0) {
		assert_null(*out);
		assert_true(why[0] != '\0');
		for (const char *c = why; *c; c++) /* reasons go to logs and the store */
			assert_true(*c >= 0x20 && *c < 0x7f);
	}
	free(copy);
	return r;
}

static json_t *parse(const char *s)
{
	json_t *j = NULL;
	int r = parse_len(s, strlen(s), MAXP, &j);
	if (r != 0)
		fail_msg("'%s' did not parse: %d", s, r);
	return j;
}

static struct cfg_point pt_of(int type)
{
	struct cfg_point p;
	memset(&p, 0, sizeof(p));
	p.name = (char *)"p";
	p.type = type;
	p.scale = 1.0;
	p.offset = 0.0;
	p.bit = -1;
	return p;
}

/* Convert the value at `path` of payload `s` for point p. */
static int conv(const char *s, const char *path, const struct cfg_point *p, struct cgw_value *v)
{
	json_t *root = parse(s), *node = NULL;
	char why[128];
	int r = jp_get(root, path, &node);

	if (r == 0) {
		r = jp_convert(node, p, v, why, sizeof(why));
		if (r != 0)
			assert_true(why[0] != '\0');
		if (r < 0)
			assert_int_equal(v->type, CGW_V_NONE);
	}
	json_decref(root);
	return r;
}

static void test_parse_kinds(void **state)
{
	(void)state;
	json_t *j;

	j = parse("{\"a\":1}");
	assert_true(json_is_object(j));
	json_decref(j);
	j = parse("  true ");
	assert_true(json_is_true(j));
	json_decref(j);
	j = parse("23.5");
	assert_true(json_is_real(j));
	json_decref(j);
	j = parse("\"open\"");
	assert_string_equal(json_string_value(j), "open");
	json_decref(j);
	j = parse("[1,[2,[3]]]");
	assert_true(json_is_array(j));
	json_decref(j);
}

static void test_parse_malformed(void **state)
{
	(void)state;
	json_t *j = NULL;
	static const char *const bad[] = {
		"{",
		"open",
		"ON",
		"{\"a\":1,}",
		"{\"a\":1} x",
		"{'a':1}",
		"[1 2]",
		"{\"a\":1,\"a\":2}", /* duplicate key: which one? */
		"\"a\\u0000b\"",     /* NUL inside a string */
		"nan",
		"01",
		"\"unterminated",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = parse_len(bad[i], strlen(bad[i]), MAXP, &j);
		if (r != -EILSEQ)
			fail_msg("'%s': got %d, want -EILSEQ", bad[i], r);
	}
	/* empty */
	assert_int_equal(parse_len("", 0, MAXP, &j), -ENODATA);
	/* binary: a NUL byte, invalid UTF-8, random bytes */
	static const unsigned char nul[] = {'{', '"', 'a', '"', ':', 0, '}'};
	assert_int_equal(parse_len(nul, sizeof(nul), MAXP, &j), -EILSEQ);
	static const unsigned char utf[] = {'"', 0xff, 0xfe, '"'};
	assert_int_equal(parse_len(utf, sizeof(utf), MAXP, &j), -EILSEQ);
	static const unsigned char bin[] = {0x89, 'P', 'N', 'G', 0x0d, 0x0a, 0x1a, 0x0a, 0x7f};
	assert_int_equal(parse_len(bin, sizeof(bin), MAXP, &j), -EILSEQ);
	/* a valid Chinese string is fine */
	j = parse("{\"room\":\"东侧楼梯间\"}");
	json_decref(j);
}

static void test_parse_bounds(void **state)
{
	(void)state;
	json_t *j = NULL;
	char why[160];
	size_t n = 100000;
	char *big = malloc(n);

	assert_non_null(big);
	/* over max_payload: refused before parsing, whatever it holds */
	memset(big, 'x', n);
	assert_int_equal(jp_parse(big, n, n - 1, &j, why, sizeof(why)), -EFBIG);
	assert_non_null(strstr(why, "max_payload"));
	/* exactly at the limit: parsed */
	big[0] = '"';
	big[n - 1] = '"';
	assert_int_equal(jp_parse(big, n, n, &j, why, sizeof(why)), 0);
	assert_int_equal(json_string_length(j), n - 2);
	json_decref(j);

	/* nesting: JP_MAX_DEPTH is fine, one more is refused before jansson
	 * recurses; brackets inside strings do not count */
	char deep[2 * (JP_MAX_DEPTH + 1) + 1];
	for (int d = JP_MAX_DEPTH; d <= JP_MAX_DEPTH + 1; d++) {
		memset(deep, '[', (size_t)d);
		memset(deep + d, ']', (size_t)d);
		int r = parse_len(deep, 2 * (size_t)d, MAXP, &j);
		if (d <= JP_MAX_DEPTH) {
			assert_int_equal(r, 0);
			json_decref(j);
		} else {
			assert_int_equal(r, -ELOOP);
		}
	}
	memset(big, '[', n); /* 100000 deep: refused quickly, no stack overflow */
	assert_int_equal(jp_parse(big, n, n, &j, why, sizeof(why)), -ELOOP);
	j = parse("{\"s\":\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}");
	json_decref(j);
	j = parse("{\"s\":\"\\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}");
	json_decref(j);
	free(big);
}

static void test_path(void **state)
{
	(void)state;
	json_t *root = parse("{\"door\":{\"state\":\"open\",\"n\":2},\"items\":[{\"id\":\"A1\"},"
			     "{\"id\":\"A2\"}],\"0\":\"zero\",\"x\":null}");
	json_t *n;

	assert_int_equal(jp_get(root, "door.state", &n), 0);
	assert_string_equal(json_string_value(n), "open");
	assert_int_equal(jp_get(root, "items.1.id", &n), 0);
	assert_string_equal(json_string_value(n), "A2");
	assert_int_equal(jp_get(root, "0", &n), 0); /* a digit key of an object */
	assert_string_equal(json_string_value(n), "zero");
	assert_int_equal(jp_get(root, "", &n), 0);
	assert_ptr_equal(n, root);
	assert_int_equal(jp_get(root, NULL, &n), 0);
	assert_ptr_equal(n, root);
	assert_int_equal(jp_get(root, "x", &n), 0); /* present, null: conversion decides */
	assert_true(json_is_null(n));

	static const char *const missing[] = {"door.lock", "items.2.id", "items.01.id",
					      "items.-1",  "items.x",    "door.state.more",
					      "nope",      "door.n.0"};
	for (size_t i = 0; i < sizeof(missing) / sizeof(missing[0]); i++) {
		n = (json_t *)1;
		assert_int_equal(jp_get(root, missing[i], &n), -ENOENT);
		assert_null(n);
	}
	static const char *const invalid[] = {".door", "door.", "door..state", "."};
	for (size_t i = 0; i < sizeof(invalid) / sizeof(invalid[0]); i++) {
		const char *why = NULL;
		assert_int_equal(jp_get(root, invalid[i], &n), -EINVAL);
		assert_int_equal(jp_path_check(invalid[i], &why), -EINVAL);
		assert_non_null(why);
	}
	char longp[JP_PATH_MAX + 2];
	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = '\0';
	assert_int_equal(jp_path_check(longp, NULL), -EINVAL);
	assert_int_equal(jp_path_check("a.b.c", NULL), 0);
	assert_int_equal(jp_path_check("", NULL), 0);
	json_decref(root);

	/* a bare payload: only the empty path finds it */
	root = parse("true");
	assert_int_equal(jp_get(root, "a", &n), -ENOENT);
	json_decref(root);
}

static void test_bool(void **state)
{
	(void)state;
	struct cfg_point p = pt_of(CGW_T_BOOL);
	struct cgw_value v;
	static const struct {
		const char *json;
		bool want;
	} good[] = {{"true", true},     {"false", false},     {"1", true},     {"0", false},
		    {"\"true\"", true}, {"\"false\"", false}, {"\"1\"", true}, {"\"0\"", false}};
	static const char *const bad[] = {"2",       "-1",       "0.5",      "1.0",  "\"on\"",
					  "\"off\"", "\"open\"", "\"TRUE\"", "null", "{}",
					  "[true]",  "\"\"",     "\" 1\""};

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		if (conv(good[i].json, "", &p, &v) != 0)
			fail_msg("bool %s refused", good[i].json);
		assert_int_equal(v.type, CGW_V_BOOL);
		assert_int_equal(v.b, good[i].want);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (conv(bad[i], "", &p, &v) != -EINVAL)
			fail_msg("bool %s accepted", bad[i]);
}

static void test_numbers(void **state)
{
	(void)state;
	struct cfg_point p = pt_of(CGW_T_NUMBER);
	struct cgw_value v;

	assert_int_equal(conv("{\"t\":23.5}", "t", &p, &v), 0);
	assert_int_equal(v.type, CGW_V_DOUBLE);
	assert_true(v.d == 23.5);
	assert_int_equal(conv("{\"t\":-7}", "t", &p, &v), 0);
	assert_true(v.d == -7.0);
	assert_int_equal(conv("{\"t\":\"23.5\"}", "t", &p, &v), 0); /* a number in a string */
	assert_true(v.d == 23.5);
	assert_int_equal(conv("{\"t\":\"07\"}", "t", &p, &v), 0);
	assert_true(v.d == 7.0);
	assert_int_equal(conv("{\"t\":\"-1e3\"}", "t", &p, &v), 0);
	assert_true(v.d == -1000.0);
	static const char *const bad[] = {"true",   "null",     "\"\"",    "\" 1\"",  "\"1 \"",
					  "\"+1\"", "\"0x10\"", "\"inf\"", "\"nan\"", "\"1.\"",
					  "\".5\"", "\"1e\"",   "\"abc\"", "[1]",     "{}"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char buf[64];
		snprintf(buf, sizeof(buf), "{\"t\":%s}", bad[i]);
		if (conv(buf, "t", &p, &v) != -EINVAL)
			fail_msg("number %s accepted", bad[i]);
	}
	/* too large for a double */
	assert_int_equal(conv("{\"t\":\"1e999\"}", "t", &p, &v), -ERANGE);

	/* scale and offset, like Modbus: raw * scale + offset */
	p.scale = 0.1;
	p.offset = -40;
	assert_int_equal(conv("{\"t\":635}", "t", &p, &v), 0);
	assert_true(fabs(v.d - 23.5) < 1e-9);

	/* float32 range */
	p = pt_of(CGW_T_FLOAT32);
	assert_int_equal(conv("1e39", "", &p, &v), -ERANGE);
	assert_int_equal(conv("1e38", "", &p, &v), 0);
}

static void test_integers(void **state)
{
	(void)state;
	struct cfg_point p;
	struct cgw_value v;
	static const struct {
		int type;
		const char *json;
		int want; /* 0 ok, else the error */
		int vtype;
		int64_t val;
	} cases[] = {
		{CGW_T_INT16, "-32768", 0, CGW_V_INT, -32768},
		{CGW_T_INT16, "32767", 0, CGW_V_INT, 32767},
		{CGW_T_INT16, "32768", -ERANGE, 0, 0},
		{CGW_T_INT16, "-32769", -ERANGE, 0, 0},
		{CGW_T_UINT16, "65535", 0, CGW_V_UINT, 65535},
		{CGW_T_UINT16, "-1", -ERANGE, 0, 0},
		{CGW_T_UINT16, "65536", -ERANGE, 0, 0},
		{CGW_T_BITS, "255", 0, CGW_V_UINT, 255},
		{CGW_T_BITS, "65536", -ERANGE, 0, 0},
		{CGW_T_INT32, "-2147483648", 0, CGW_V_INT, INT32_MIN},
		{CGW_T_INT32, "2147483648", -ERANGE, 0, 0},
		{CGW_T_UINT32, "4294967295", 0, CGW_V_UINT, 4294967295LL},
		{CGW_T_UINT32, "4294967296", -ERANGE, 0, 0},
		{CGW_T_INT64, "-9223372036854775808", 0, CGW_V_INT, INT64_MIN},
		{CGW_T_INT64, "9223372036854775807", 0, CGW_V_INT, INT64_MAX},
		{CGW_T_UINT64, "9223372036854775807", 0, CGW_V_UINT, INT64_MAX},
		{CGW_T_UINT64, "-1", -ERANGE, 0, 0},
		{CGW_T_INT32, "3.0", 0, CGW_V_INT, 3}, /* an integral real */
		{CGW_T_INT32, "3.5", -ERANGE, 0, 0},
		{CGW_T_INT32, "1e300", -ERANGE, 0, 0},
		{CGW_T_INT32, "-1e300", -ERANGE, 0, 0},
		{CGW_T_INT64, "9.3e18", -ERANGE, 0, 0},
		{CGW_T_INT32, "\"42\"", 0, CGW_V_INT, 42},
		{CGW_T_INT32, "\"4.0\"", 0, CGW_V_INT, 4},
		{CGW_T_INT64, "\"99999999999999999999\"", -ERANGE, 0, 0},
		{CGW_T_INT32, "true", -EINVAL, 0, 0},
		{CGW_T_INT32, "\"x\"", -EINVAL, 0, 0},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		p = pt_of(cases[i].type);
		int r = conv(cases[i].json, "", &p, &v);
		if (r != cases[i].want)
			fail_msg("case %zu (%s): got %d, want %d", i, cases[i].json, r,
				 cases[i].want);
		if (r == 0) {
			assert_int_equal(v.type, cases[i].vtype);
			if (v.type == CGW_V_INT)
				assert_true(v.i == cases[i].val);
			else
				assert_true(v.u == (uint64_t)cases[i].val);
		}
	}
	/* an integer type with scale gives a double */
	p = pt_of(CGW_T_INT16);
	p.scale = 0.01;
	assert_int_equal(conv("-250", "", &p, &v), 0);
	assert_int_equal(v.type, CGW_V_DOUBLE);
	assert_true(fabs(v.d + 2.5) < 1e-12);
}

static void test_strings(void **state)
{
	(void)state;
	struct cfg_point p = pt_of(CGW_T_STRING);
	struct cgw_value v;

	assert_int_equal(conv("{\"a\":\"picked_up\"}", "a", &p, &v), 0);
	assert_int_equal(v.type, CGW_V_STRING);
	assert_string_equal(v.s, "picked_up");
	cgw_value_clear(&v);
	assert_int_equal(conv("{\"card\":12345678}", "card", &p, &v), 0); /* number: its text */
	assert_string_equal(v.s, "12345678");
	cgw_value_clear(&v);
	assert_int_equal(conv("0.1", "", &p, &v), 0);
	assert_string_equal(v.s, "0.1");
	cgw_value_clear(&v);
	assert_int_equal(conv("false", "", &p, &v), 0);
	assert_string_equal(v.s, "false");
	cgw_value_clear(&v);
	assert_int_equal(conv("\"a\\nb\\u0001c\"", "", &p, &v), 0); /* control chars */
	assert_string_equal(v.s, "a?b?c");
	cgw_value_clear(&v);
	assert_int_equal(conv("\"北门\"", "", &p, &v), 0);
	assert_string_equal(v.s, "北门");
	cgw_value_clear(&v);
	assert_int_equal(conv("null", "", &p, &v), -EINVAL);
	assert_int_equal(conv("{\"a\":{}}", "a", &p, &v), -EINVAL);
	assert_int_equal(conv("[]", "", &p, &v), -EINVAL);

	/* length: string:N bounds it, otherwise JP_STRING_MAX */
	p.str_len = 4;
	assert_int_equal(conv("\"abcd\"", "", &p, &v), 0);
	cgw_value_clear(&v);
	assert_int_equal(conv("\"abcde\"", "", &p, &v), -E2BIG);
	p.str_len = 0;
	char *big = malloc(JP_STRING_MAX + 4);
	assert_non_null(big);
	memset(big, 'a', JP_STRING_MAX + 3);
	big[0] = '"';
	big[JP_STRING_MAX + 2] = '"';
	big[JP_STRING_MAX + 3] = '\0';
	assert_int_equal(conv(big, "", &p, &v), -E2BIG); /* JP_STRING_MAX + 1 bytes */
	big[JP_STRING_MAX + 1] = '"';
	big[JP_STRING_MAX + 2] = '\0';
	assert_int_equal(conv(big, "", &p, &v), 0);
	assert_int_equal(strlen(v.s), JP_STRING_MAX);
	cgw_value_clear(&v);
	free(big);
}

static void test_enum(void **state)
{
	(void)state;
	struct cfg_enum e[] = {{0, (char *)"closed"}, {1, (char *)"open"}, {7, (char *)"fault"}};
	struct cfg_point p = pt_of(CGW_T_NUMBER);
	struct cgw_value v;

	p.enums = e;
	p.n_enums = 3;
	/* a word gives its key, raw, for the core to map back */
	assert_int_equal(conv("{\"s\":\"open\"}", "s", &p, &v), 0);
	assert_int_equal(v.type, CGW_V_INT);
	assert_int_equal(v.i, 1);
	assert_int_equal(conv("{\"s\":\"fault\"}", "s", &p, &v), 0);
	assert_int_equal(v.i, 7);
	/* integers, integral reals and numeric strings are keys */
	assert_int_equal(conv("{\"s\":0}", "s", &p, &v), 0);
	assert_int_equal(v.i, 0);
	assert_int_equal(conv("{\"s\":7.0}", "s", &p, &v), 0);
	assert_int_equal(v.i, 7);
	assert_int_equal(conv("{\"s\":\"1\"}", "s", &p, &v), 0);
	assert_int_equal(v.i, 1);
	/* not in the enum: usable as a bad-quality reading (1) */
	assert_int_equal(conv("{\"s\":5}", "s", &p, &v), 1);
	assert_int_equal(v.type, CGW_V_INT);
	assert_int_equal(v.i, 5);
	assert_int_equal(conv("{\"s\":\"Open\"}", "s", &p, &v), 1); /* words are exact */
	assert_int_equal(v.type, CGW_V_NONE);
	/* wrong kinds */
	assert_int_equal(conv("{\"s\":true}", "s", &p, &v), -EINVAL);
	assert_int_equal(conv("{\"s\":null}", "s", &p, &v), -EINVAL);
	assert_int_equal(conv("{\"s\":[1]}", "s", &p, &v), -EINVAL);
	assert_int_equal(conv("{\"s\":1.5}", "s", &p, &v), -ERANGE);
	/* enum wins over the declared type */
	p.type = CGW_T_STRING;
	assert_int_equal(conv("\"closed\"", "", &p, &v), 0);
	assert_int_equal(v.type, CGW_V_INT);
	assert_int_equal(v.i, 0);
	p.type = CGW_T_BOOL;
	assert_int_equal(conv("7", "", &p, &v), 0);
	assert_int_equal(v.i, 7);
}

static void test_timestamp(void **state)
{
	(void)state;
	const int64_t now = 1763700000000LL; /* 2025-11-21 */
	json_t *j;

	j = parse("{\"ts\":1763699990000,\"a\":1}");
	assert_true(jp_timestamp(j, now) == 1763699990000LL);
	json_decref(j);
	j = parse("{\"ts\":1763699990000.7}");
	assert_true(jp_timestamp(j, now) == 1763699990000LL);
	json_decref(j);
	static const char *const ignored[] = {
		"{\"ts\":1763699990}", /* seconds, not ms */
		"{\"ts\":0}",          /* a clock never set */
		"{\"ts\":-5}",
		"{\"ts\":\"1763699990000\"}", /* not a number */
		"{\"ts\":1863700000000}",     /* three years ahead */
		"{\"ts\":1e300}",
		"{\"time\":1763699990000}",
		"[1763699990000]",
		"1763699990000",
	};
	for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++) {
		j = parse(ignored[i]);
		if (jp_timestamp(j, now) != now)
			fail_msg("%s: ts taken", ignored[i]);
		json_decref(j);
	}
	j = parse("{\"ts\":1763700000000}");
	assert_true(jp_timestamp(j, now - 1000) == now); /* a second ahead: believed */
	json_decref(j);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_kinds),  cmocka_unit_test(test_parse_malformed),
		cmocka_unit_test(test_parse_bounds), cmocka_unit_test(test_path),
		cmocka_unit_test(test_bool),         cmocka_unit_test(test_numbers),
		cmocka_unit_test(test_integers),     cmocka_unit_test(test_strings),
		cmocka_unit_test(test_enum),         cmocka_unit_test(test_timestamp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
