/*
 * json_path.h - a point's value out of an MQTT JSON payload. Pure: no I/O,
 * no clock, no global state (jansson only), so it is unit-tested and fuzzed
 * alone and safe on any thread.
 *
 * Payload (jp_parse): one JSON text of any kind - an object, an array, or a
 * bare value (`true`, `23.5`, `"open"`) - in UTF-8, at most `max_len` bytes
 * (checked before anything is parsed) and nested at most JP_MAX_DEPTH deep
 * (checked by a scan before jansson recurses). Refused: empty payloads,
 * binary or invalid UTF-8, NUL bytes (also as \u0000), trailing garbage,
 * duplicate object keys (ambiguous: which one is the door?). Words that are
 * not JSON (`open`, `ON`) are invalid JSON: a device that sends bare words
 * needs a bridge, not a guess.
 *
 * Path (jp_get): dot-separated segments, e.g. `door.state`; a segment of
 * decimal digits indexes an array (`items.0.id`) when the value there is an
 * array, and is an object key otherwise. The empty path is the whole
 * payload. Keys containing '.' cannot be addressed. A path that runs into a
 * scalar, a missing key or an index past the end is "missing" (-ENOENT).
 *
 * Conversion (jp_convert), by the point's enum and type - no guessing beyond
 * what is listed:
 *   enum (any type)  integer key: JSON integer, integral real (2.0) or a
 *                    numeric string ("2"); or a string equal to one of the
 *                    enum's words, which gives that word's key. Result
 *                    CGW_V_INT with the raw key (the core maps it back to
 *                    the word). An integer that is not a key: returned 1
 *                    (CGW_V_INT raw); a string that is no word: returned 1
 *                    (CGW_V_NONE): usable as a reading of bad quality.
 *   bool             true/false; integers 0/1 (also "0"/"1"); the strings
 *                    "true"/"false" (lowercase). Not "on", "open", 2 or 0.5.
 *   int16..uint64,   a JSON integer, an integral real, or a string holding a
 *   bits             number (below), within the type's range (bits: 0..65535;
 *                    uint64 up to INT64_MAX, jansson's limit). int* gives
 *                    CGW_V_INT, uint* and bits CGW_V_UINT.
 *   number, float*   any JSON number, or a string holding one: CGW_V_DOUBLE.
 *   scale/offset     a numeric point (not enum) with scale != 1 or offset
 *                    != 0 gives CGW_V_DOUBLE raw * scale + offset (as Modbus).
 *   string           a JSON string (control characters become '?'), at most
 *                    JP_STRING_MAX bytes (string:N: N); a number gives its
 *                    decimal text, true/false their word: CGW_V_STRING.
 * A "string holding a number" is the whole string in JSON number syntax,
 * except that leading zeros are allowed ("07"): no spaces, no '+', no hex,
 * no inf/nan. null, objects and arrays convert to nothing (wrong type).
 *
 * Timestamps (jp_timestamp): a numeric top-level "ts" of an object payload,
 * in ms since the epoch, is the source time when it lies between 2000-01-01
 * and a day after now_ms; otherwise (absent, seconds instead of ms, a clock
 * that was never set) now_ms is.
 *
 * Ownership: jp_parse() gives the caller a reference (json_decref()); jp_get()
 * returns a borrowed node of root; a CGW_V_STRING from jp_convert() is the
 * caller's (cgw_value_clear()).
 */
#ifndef CGW_JSON_PATH_H
#define CGW_JSON_PATH_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "model.h"

#define JP_MAX_DEPTH 32                     /* arrays/objects nested in a payload */
#define JP_PATH_MAX 255                     /* bytes of a path */
#define JP_STRING_MAX 1024                  /* bytes of a string value */
#define JP_TS_MIN_MS 946684800000LL         /* 2000-01-01T00:00:00Z */
#define JP_TS_AHEAD_MS (24LL * 3600 * 1000) /* a "ts" further ahead is not believed */

/* Parse a payload. Returns 0 and *out (the caller's reference), or:
 * -EFBIG (len > max_len, nothing parsed), -ENODATA (empty), -ELOOP (nested
 * deeper than JP_MAX_DEPTH), -EILSEQ (not JSON: binary, invalid UTF-8,
 * syntax, duplicate key), -ENOMEM. `why` (may be NULL) gets a short English
 * reason with the position of a syntax error. */
int jp_parse(const void *buf, size_t len, size_t max_len, json_t **out, char *why, size_t whylen);

/* 0 if `path` is a valid path (NULL and "" are: the whole payload), else
 * -EINVAL and *why (may be NULL) a static reason: empty segment, too long. */
int jp_path_check(const char *path, const char **why);

/* The node at `path` (borrowed from root): 0 and *out, -ENOENT when the
 * payload has nothing there, -EINVAL for an invalid path. */
int jp_get(const json_t *root, const char *path, json_t **out);

/* Convert a node for point `pt` (its type, enum, scale, offset, str_len).
 * Returns 0 (good value), 1 (an enum point's value that is not in the enum:
 * see above), or -EINVAL (wrong JSON type for the point), -ERANGE (number
 * outside the type's range, or not an integer for an integer type), -E2BIG
 * (string too long), -ENOMEM. On a negative return out is CGW_V_NONE.
 * `why` (may be NULL) gets a short English reason for 1 and errors. */
int jp_convert(const json_t *j, const struct cfg_point *pt, struct cgw_value *out, char *why,
	       size_t whylen);

/* The source time of a payload (see above). */
int64_t jp_timestamp(const json_t *root, int64_t now_ms);

#endif
