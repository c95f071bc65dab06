/*
 * config.h - the configuration: YAML files -> plain structs.
 *
 * config_load() reads the main file, its includes and every profile a device
 * names, checks everything it can without touching devices, and returns
 * either a complete struct cgw_config or the list of every error found, each
 * formatted "FILE:LINE: message" with the line of the offending key.
 *
 * Ownership: the config owns every string and array in it; config_free()
 * releases all. A loaded config is immutable; a reload builds a new one and
 * the core swaps pointers. Objects refer to each other by index (device->bus,
 * device->profile, alarm->point), so a config can be freed in one go.
 */
#ifndef CGW_CONFIG_H
#define CGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

#define CFG_MAX_KEYS 48

enum cfg_uplink_type { CFG_UPLINK_MQTT, CFG_UPLINK_HTTP };
enum cfg_class { CFG_CLASS_FIRE, CFG_CLASS_SECURITY, CFG_CLASS_ACCESS, CFG_CLASS_SERVICE };
enum cfg_severity { CFG_SEV_CRITICAL, CFG_SEV_MAJOR, CFG_SEV_MINOR, CFG_SEV_WARNING };
enum cfg_op { CFG_OP_ABOVE, CFG_OP_BELOW, CFG_OP_EQUALS, CFG_OP_NOT_EQUALS, CFG_OP_BIT };
enum cfg_sync { CFG_SYNC_NORMAL, CFG_SYNC_FULL };

/* Where an object was written, and the line of each of its keys (0 = not
 * given), indexed like the object's key table. */
struct cfg_obj {
	const char *file; /* owned by cgw_config.files */
	int line;
	int key_line[CFG_MAX_KEYS];
};

struct cfg_strlist {
	char **v;
	size_t n;
};

struct cfg_kv {
	char *key;
	char *value;
};

struct cfg_enum {
	int64_t key;
	char *label;
};

struct cfg_point {
	struct cfg_obj o;
	char *name;
	bool mqtt; /* an MQTT point (topic/json/event) rather than a Modbus one */
	/* Modbus */
	int table; /* enum cgw_table */
	int64_t address;
	int type; /* enum cgw_ptype */
	unsigned str_len;
	int order; /* enum cgw_order */
	double scale, offset;
	int64_t bit;     /* -1: whole value */
	int64_t poll_ms; /* 0: the device's poll; else read this often (fast point) */
	/* MQTT */
	char *topic;
	char *json;
	bool event;
	int64_t rate_limit_ms; /* events: at most one per this interval (0: all) */
	/* both */
	struct cfg_enum *enums;
	size_t n_enums;
	char *unit;
	bool writable;
	double deadband;
	int64_t report_every_ms;
	/* `invalid:` raw values that mean "no reading" (0xFFFF, -32768...), as
	 * written, then (check) as the value the point decodes them to */
	double *invalid;
	size_t n_invalid;
	/* `range: [min, max]`: a value outside is bad quality (and counted) */
	bool has_range;
	double range_min, range_max;
};

/* Is a good reading of pt really one? 0 yes; CFG_VALUE_INVALID (one of the
 * point's `invalid:` sentinels) or CFG_VALUE_OUT_OF_RANGE. */
enum { CFG_VALUE_OK, CFG_VALUE_INVALID, CFG_VALUE_OUT_OF_RANGE };
int cfg_point_check_value(const struct cfg_point *pt, const struct cgw_value *v);

/* `unless:` a rule does not fire when, at the moment its condition becomes
 * true, another point of the device has (or had, within `within_ms`) a value:
 * a door that opens within 5 s of an unlock or an exit button is not forced. */
struct cfg_unless {
	struct cfg_obj o;
	char *point;
	size_t point_idx;
	char *operand_text;
	struct cgw_value operand;
	int64_t within_ms;
};

struct cfg_alarm {
	struct cfg_obj o;
	char *name;
	char *point;
	size_t point_idx;
	int op;                   /* enum cfg_op */
	double threshold;         /* above/below */
	struct cgw_value operand; /* equals/not_equals, resolved against the point */
	char *operand_text;
	int64_t bit;
	double deadband;
	int64_t on_delay_ms, off_delay_ms;
	int64_t poll_ms; /* 0, or the rule's point is read at least this often */
	int severity;    /* enum cfg_severity */
	char *message;
	char *clear_message; /* NULL: the message followed by 已恢复 */
	bool latch;
	struct cfg_unless *unless;
	size_t n_unless;
};

struct cfg_profile {
	struct cfg_obj o;
	char *name;
	char *path;
	int class; /* enum cfg_class */
	char *description;
	struct cfg_point *points;
	size_t n_points;
	struct cfg_alarm *alarms;
	size_t n_alarms;
	bool mqtt; /* all points are MQTT points */
};

/* A bus: what every bus has, and its type's own options. What a type
 * takes, checks and derives is declared by its driver (config_keys.h). */
struct cfg_bus_type;
struct cfg_bus {
	struct cfg_obj o; /* name, type */
	char *name;
	const struct cfg_bus_type *kind; /* NULL until `type:` names a known type */
	void *opts;                      /* the type's options struct, owned */
	struct cfg_obj opts_o;           /* its keys' lines, indexed like the type's table */
	size_t n_devices;
};

struct cfg_device {
	struct cfg_obj o;
	char *id;
	char *name;
	char *profile_name;
	size_t profile; /* index into cfg->profiles */
	char *bus_name;
	size_t bus; /* index into cfg->buses */
	int64_t unit;
	int64_t poll_ms;
	int64_t timeout_ms, retries, offline_after, max_gap, max_registers; /* -1: the bus's */
	int64_t address_base;
	char *topic;
	int64_t stale_after_ms; /* -1: the bus's */
	struct cfg_kv *location;
	size_t n_location;
};

struct cfg_uplink {
	struct cfg_obj o;
	char *name;
	int type; /* enum cfg_uplink_type */
	char *url;
	char *client_id;
	char *username;
	char *password_file;
	char *ca_file, *cert_file, *key_file;
	char *topic_prefix;
	bool insecure;
	unsigned send_mask; /* 1 << enum cgw_lane */
	char *hmac_secret_file;
	int64_t late_after_ms;
	int64_t timeout_ms;
	int64_t keepalive_ms;
	int64_t inflight;
	int64_t protocol; /* 4 = MQTT 3.1.1, 5 = MQTT 5 */
	/* parsed from url */
	char *host;
	int64_t port;
	bool tls;
};

struct cgw_config {
	char *path;               /* the main file, as given */
	struct cfg_strlist files; /* every file read, for positions and the hash */
	uint64_t hash;            /* FNV-1a over every file read, in order */
	struct {
		struct cfg_obj o;
		char *id, *site, *state_dir;
	} gateway;
	struct cfg_strlist profile_dirs;
	struct {
		struct cfg_obj o;
		/* max_size, min_free: bytes, or -N for N % of the filesystem */
		int64_t max_size, min_free, telemetry_retention_ms, batch_delay_ms;
		int sync; /* enum cfg_sync */
	} store;
	struct {
		struct cfg_obj o;
		char *socket;
		char *group;
	} control;
	struct {
		struct cfg_obj o;
		bool enabled;
		char *listen;
	} metrics;
	struct {
		struct cfg_obj o;
		bool enabled;
		char *listen;
		char *tls_cert, *tls_key; /* both or neither; required off loopback */
		char *users;              /* "" = STATE_DIR/console-users */
	} console;
	struct cfg_uplink *uplinks;
	size_t n_uplinks;
	struct cfg_bus *buses;
	size_t n_buses;
	struct cfg_device *devices;
	size_t n_devices;
	struct cfg_profile *profiles;
	size_t n_profiles;
	struct cfg_strlist warnings; /* "FILE:LINE: warning: ...": loads, but looks wrong */
};

/* Errors: every "FILE:LINE: message", in the order found. */
struct cfg_errors {
	char **v;
	size_t n;
};

/* Load and check. Returns 0 and *out, or -EINVAL with errs filled (also for
 * an unreadable main file). The caller frees errs with cfg_errors_free(). */
int config_load(const char *path, struct cgw_config **out, struct cfg_errors *errs);
void config_free(struct cgw_config *cfg);
void cfg_errors_free(struct cfg_errors *errs);
/* Load from a YAML text in memory (fuzzing, tests). `name` is used in errors. */
int config_load_string(const char *name, const char *text, size_t len, struct cgw_config **out,
		       struct cfg_errors *errs);

/* The one-screen summary of `cgwd --check-config`. */
void config_print_summary(const struct cgw_config *cfg, FILE *f);
/* Every key of every section with type, default and help (`cgwd --help-config`). */
void config_print_reference(FILE *f);

/* Parse helpers, exported for other modules and tests. */
int cfg_parse_duration(const char *s, int64_t *ms);
int cfg_parse_size(const char *s, int64_t *bytes);

/* The bus's `type:` word ("?" when not known). */
const char *cfg_bus_type_name(const struct cfg_bus *b);
const char *cfg_severity_name(int s);
const char *cfg_class_name(int c);
const struct cfg_profile *cfg_device_profile(const struct cgw_config *cfg,
					     const struct cfg_device *d);
/* The value of a device's location key, or NULL. */
const char *cfg_device_location(const struct cfg_device *d, const char *key);
/* "localhost", an address in 127.0.0.0/8, ::1 (also "[::1]") or
 * ::ffff:127.x.y.z: plaintext there never leaves the machine. Addresses are
 * parsed, not prefix-matched: "127.0.0.1.nip.io" is a name, not loopback. */
bool cfg_is_loopback(const char *host);
/* Index of a device by id, or -1. */
long cfg_find_device(const struct cgw_config *cfg, const char *id);

#endif
