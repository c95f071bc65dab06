/*
 * config_diff.h - what a reload changes: two loaded configurations compared
 * object by object, for core_reload() (see core.h).
 *
 * Equality is of meaning, not of text: positions (struct cfg_obj) and indexes
 * into the arrays are ignored, referenced objects are compared by content
 * (a device's profile, a bus's devices in order). Every field of every struct
 * is compared; on x86-64 a _Static_assert on each struct's size makes a new
 * field fail the build until it is compared here too.
 *
 * Files a struct names by path (password, certificates, HMAC secret) are
 * compared by path only: whether their content changed since an object was
 * opened is cfg_*_files_changed_since()'s question.
 */
#ifndef CGW_CONFIG_DIFF_H
#define CGW_CONFIG_DIFF_H

#include <stdbool.h>
#include <time.h>

#include "config.h"

/* The same profile content (points, rules, class), whatever its position. */
bool cfg_profile_equal(const struct cfg_profile *a, const struct cfg_profile *b);
/* Device a of ca and device b of cb: every field, and their profiles. */
bool cfg_device_equal(const struct cgw_config *ca, const struct cfg_device *a,
		      const struct cgw_config *cb, const struct cfg_device *b);
/* Bus a of ca and bus b of cb: every field, the gateway id (the MQTT client
 * id derives from it) and the same devices in the same order, each equal. */
bool cfg_bus_equal(const struct cgw_config *ca, size_t a, const struct cgw_config *cb, size_t b);
/* Uplink a of ca and b of cb: every field, and the gateway id and site (they
 * are in every topic and payload). */
bool cfg_uplink_equal(const struct cgw_config *ca, const struct cfg_uplink *a,
		      const struct cgw_config *cb, const struct cfg_uplink *b);
/* The store must be reopened: state_dir or a store option differs. */
bool cfg_store_differs(const struct cgw_config *a, const struct cgw_config *b);

/* Whether a file the bus or uplink reads at open (password, CA, certificate,
 * key, HMAC secret) was modified (or replaced) at or after `since`
 * (CLOCK_REALTIME, as file times are), or cannot be examined now. */
bool cfg_bus_files_changed_since(const struct cfg_bus *b, const struct timespec *since);
bool cfg_uplink_files_changed_since(const struct cfg_uplink *u, const struct timespec *since);

#endif
