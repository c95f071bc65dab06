/*
 * console_parse.c - form bodies, cookies and the accounts file (see
 * console_parse.h).
 */
#include "console_parse.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes s[0..n) into out. */
static int decode(const char *s, size_t n, char *out, size_t outlen)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];
		if (c == '+') {
			c = ' ';
		} else if (c == '%') {
			int h, l;
			if (i + 2 >= n)
				return -EINVAL;
			h = hexval(s[i + 1]);
			l = hexval(s[i + 2]);
			if (h < 0 || l < 0)
				return -EINVAL;
			c = h * 16 + l;
			i += 2;
		}
		if (c == 0 || o + 1 >= outlen)
			return -EINVAL;
		out[o++] = (char)c;
	}
	if (outlen == 0)
		return -EINVAL;
	out[o] = '\0';
	return 0;
}

int console_form_get(const char *body, size_t len, const char *key, char *out, size_t outlen)
{
	size_t klen = strlen(key), i = 0;

	while (i < len) {
		size_t end = i;
		while (end < len && body[end] != '&')
			end++;
		const char *eq = memchr(body + i, '=', end - i);
		size_t nlen = eq ? (size_t)(eq - (body + i)) : end - i;
		if (nlen == klen && !memcmp(body + i, key, klen)) {
			if (!eq)
				return decode("", 0, out, outlen);
			return decode(eq + 1, (size_t)(body + end - (eq + 1)), out, outlen);
		}
		i = end + 1;
	}
	return -ENOENT;
}

int console_cookie_get(const char *h, const char *name, char *out, size_t outlen)
{
	size_t nlen = strlen(name);

	while (h && *h) {
		while (*h == ' ' || *h == '\t' || *h == ';')
			h++;
		const char *end = strchr(h, ';');
		size_t plen = end ? (size_t)(end - h) : strlen(h);
		if (plen > nlen && h[nlen] == '=' && !memcmp(h, name, nlen)) {
			size_t vlen = plen - nlen - 1;
			const char *v = h + nlen + 1;
			while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
				vlen--;
			if (vlen + 1 > outlen)
				return -EINVAL;
			memcpy(out, v, vlen);
			out[vlen] = '\0';
			return 0;
		}
		if (!end)
			break;
		h = end + 1;
	}
	return -ENOENT;
}

static const char *const roles[] = {"duty", "installer", "admin"};

const char *console_role_name(enum console_role r)
{
	return (unsigned)r < 3 ? roles[r] : "?";
}

int console_role_from_name(const char *s)
{
	for (int i = 0; i < 3; i++)
		if (s && !strcmp(s, roles[i]))
			return i;
	return -1;
}

bool console_name_ok(const char *s)
{
	size_t n = 0;

	if (!s || !((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
		return false;
	for (; s[n]; n++) {
		char c = s[n];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
		      c == '-'))
			return false;
	}
	return n <= CONSOLE_NAME_MAX;
}

static bool hash_ok(const char *s, size_t n)
{
	if (n < 2 || n > CONSOLE_HASH_MAX || s[0] != '$')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '$' || c == '.' || c == '/'))
			return false;
	}
	return true;
}

static int parse_line(const char *l, size_t n, struct console_user *u)
{
	const char *c1 = memchr(l, ':', n), *c2;
	char role[16];

	if (!c1)
		return -EINVAL;
	c2 = memchr(c1 + 1, ':', n - (size_t)(c1 + 1 - l));
	if (!c2)
		return -EINVAL;
	size_t nl = (size_t)(c1 - l), rl = (size_t)(c2 - c1 - 1), hl = n - (size_t)(c2 + 1 - l);
	if (nl > CONSOLE_NAME_MAX || rl >= sizeof(role) || !hash_ok(c2 + 1, hl))
		return -EINVAL;
	memcpy(u->name, l, nl);
	u->name[nl] = '\0';
	memcpy(role, c1 + 1, rl);
	role[rl] = '\0';
	int r = console_role_from_name(role);
	if (!console_name_ok(u->name) || r < 0)
		return -EINVAL;
	u->role = (enum console_role)r;
	memcpy(u->hash, c2 + 1, hl);
	u->hash[hl] = '\0';
	return 0;
}

int console_users_parse(const char *text, size_t len, struct console_user *users, size_t max,
			size_t *n, size_t *bad)
{
	size_t i = 0, k = 0, nbad = 0;

	while (i < len) {
		size_t end = i;
		while (end < len && text[end] != '\n')
			end++;
		size_t ll = end - i;
		if (ll && text[i + ll - 1] == '\r')
			ll--;
		if (ll && text[i] != '#') {
			struct console_user u;
			if (parse_line(text + i, ll, &u) < 0) {
				nbad++;
			} else {
				if (k == max) {
					*n = k;
					if (bad)
						*bad = nbad;
					return -E2BIG;
				}
				users[k++] = u;
			}
		}
		i = end + 1;
	}
	*n = k;
	if (bad)
		*bad = nbad;
	return 0;
}

json_t *console_commission_form(const char *body, size_t len)
{
	static const char *const text_keys[] = {"bus", "units", "table"};
	static const char *const num_keys[] = {"address", "unit", "count", "timeout_ms"};
	char v[CONSOLE_FIELD_MAX];
	json_t *q = json_object();

	for (size_t i = 0; q && i < sizeof(text_keys) / sizeof(text_keys[0]); i++)
		if (console_form_get(body, len, text_keys[i], v, sizeof(v)) == 0 && *v)
			json_object_set_new(q, text_keys[i], json_string(v));
	for (size_t i = 0; q && i < sizeof(num_keys) / sizeof(num_keys[0]); i++) {
		char *end;
		long long n;
		if (console_form_get(body, len, num_keys[i], v, sizeof(v)) < 0 || !*v)
			continue;
		errno = 0;
		n = strtoll(v, &end, 10);
		if (!errno && *end == '\0' && end != v &&
		    (v[0] == '-' || (v[0] >= '0' && v[0] <= '9')))
			json_object_set_new(q, num_keys[i], json_integer(n));
		else
			json_object_set_new(q, num_keys[i], json_string(v));
	}
	return q;
}
