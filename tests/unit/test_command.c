/* Command parsing: good commands and every kind of malformed one. */
/* clang-format off */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
/* clang-format on */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

static int parse(const char *s, struct command *c, char *why)
{
	why[0] = '\0';
	return command_parse(s, strlen(s), c, why, 128);
}

static void test_good(void **state)
{
	struct command c;
	char why[128];

	(void)state;
	assert_int_equal(parse("{\"id\":\"c1\",\"action\":\"write\",\"point\":\"pump\",\"value\":2.5,"
			       "\"by\":\"张三\"}",
			       &c, why),
			 0);
	assert_string_equal(c.id, "c1");
	assert_string_equal(c.action, "write");
	assert_string_equal(c.point, "pump");
	assert_string_equal(c.by, "张三");
	assert_true(json_is_real(c.value));
	char *d = command_dump(&c);
	assert_non_null(strstr(d, "\"value\":2.5"));
	free(d);
	command_clear(&c);
	/* no action: parsed (the id is there to answer to); the caller rejects it */
	assert_int_equal(parse("{\"id\":\"x\"}", &c, why), 0);
	assert_null(c.action);
	command_clear(&c);
}

static void test_malformed(void **state)
{
	static const char *const bad[] = {
		"",
		"not json",
		"{\"id\":\"a\"",
		"[1,2,3]",
		"\"just a string\"",
		"42",
		"{}",
		"{\"id\":7}",
		"{\"id\":\"\"}",
		"{\"id\":null}",
		"{\"id\":\"a\",\"id\":\"b\"}",
		"{\"id\":\"a\\u0000b\"}",
		"{\"id\":\"a\\nb\"}",
		"{\"id\":\"a\",\"action\":[\"ack\"]}",
		"{\"id\":\"a\",\"point\":{}}",
		"{\"id\":\"a\",\"by\":5}",
	};
	struct command c;
	char why[128];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (parse(bad[i], &c, why) == 0)
			fail_msg("accepted: %s", bad[i]);
		assert_true(why[0] != '\0');
		assert_null(c.root);
	}
}

static void test_limits(void **state)
{
	struct command c;
	char why[128];
	size_t n = COMMAND_MAX_BYTES + 10;
	char *big = malloc(n + 1);

	(void)state;
	/* too big: refused before parsing */
	memset(big, ' ', n);
	memcpy(big, "{\"id\":\"a\"}", 10);
	big[n] = '\0';
	assert_int_equal(command_parse(big, n, &c, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "bytes"));
	assert_string_equal(c.id, "a"); /* answerable: the id is at its start */
	/* an id longer than COMMAND_ID_MAX */
	memset(big, 'x', 300);
	big[300] = '\0';
	char *msg;
	assert_true(asprintf(&msg, "{\"id\":\"%s\"}", big) > 0);
	assert_int_equal(parse(msg, &c, why), -EINVAL);
	assert_string_equal(c.id, "");
	free(msg);
	/* deep nesting and binary junk do not crash */
	char deep[2100];
	memset(deep, '[', 2000);
	deep[2000] = '\0';
	assert_int_equal(parse(deep, &c, why), -EINVAL);
	unsigned char junk[64];
	for (size_t i = 0; i < sizeof(junk); i++)
		junk[i] = (unsigned char)(i * 37 + 11);
	assert_int_equal(command_parse((const char *)junk, sizeof(junk), &c, why, sizeof(why)),
			 -EINVAL);
	free(big);
}

/* A refusal is answered whenever an id can be read: from a JSON object
 * with bad fields, and from a payload that is not JSON at all. */
static void test_refusal_keeps_id(void **state)
{
	static const struct {
		const char *in, *id;
	} cases[] = {
		{"{\"id\":\"a\",\"action\":[\"ack\"]}", "a"},
		{"{\"id\":\"b\",\"by\":5}", "b"},
		{"{\"id\":\"c\",\"action\":\"ack\"", "c"},             /* cut short */
		{"{ \"id\" : \"d-1\" , \"action\": ack}", "d-1"},      /* a bare word */
		{"{\"action\":\"ack\",\"id\":\"e\",\"alarm\":}", "e"}, /* id not first */
		{"{\"by\":\"x\\\"id\\\":\\\"no\",\"id\":\"f\",", "f"}, /* "id" inside a string */
		{"{\"x\":{\"id\":\"inner\"},\"action\":", ""}, /* nested: not the command's */
		{"{\"id\":\"a\",\"id\":\"b\"}", ""},           /* two ids */
		{"{\"id\":\"a\",\"x\":1,\"id\":\"b\",", ""},   /* two ids, cut */
		{"{\"id\":\"a\\nb\",", ""},                    /* escapes: not plain */
		{"{\"id\":7,", ""},
		{"{\"id\":\"", ""},
		{"not json", ""},
		{"", ""},
		{"{\"action\":\"ack\"}", ""}, /* valid, no id */
		{"{\"id\":\"\"}", ""},
	};
	struct command c;
	char why[128];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		assert_int_equal(parse(cases[i].in, &c, why), -EINVAL);
		if (strcmp(c.id, cases[i].id))
			fail_msg("%s: id '%s', expected '%s'", cases[i].in, c.id, cases[i].id);
		assert_true(why[0] != '\0');
		command_clear(&c);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_good),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_refusal_keeps_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
