/*
 * config_keys.h - the configuration's key tables, and the descriptor with
 * which a driver declares a type of bus.
 *
 * Every section of the configuration is a table of struct cfg_key (name,
 * kind, offset of the field, default, range, flags, help); one walker in
 * config.c applies a table to a YAML mapping, so unknown keys, wrong values
 * and missing keys are reported the same way everywhere.
 *
 * A type of bus is described where its driver lives (drivers/): a struct
 * cfg_bus_type names the `type:` word, the key table over the driver's own
 * options struct, the checks particular to it and how its devices are
 * addressed. drivers/bus_types.c lists every type; the loader walks that
 * list to take `type:`, apply the type's keys to a fresh options struct
 * (struct cfg_bus.opts), refuse the keys of other types ("key 'x' does not
 * apply to a modbus-tcp bus"), and run the type's check. The reload diff
 * and `--help-config` walk the same tables. Adding a type of bus is a
 * descriptor in drivers/ and a line in the list; nothing in daemon/ asks
 * which type a bus is.
 *
 * Ownership: descriptors and tables are static and outlive every config.
 * The options struct belongs to its bus (config_free() frees its K_STR and
 * K_STRLIST fields, then calls the type's free hook for what the check
 * derived).
 */
#ifndef CGW_CONFIG_KEYS_H
#define CGW_CONFIG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "config.h"

enum ktype {
	K_STR,      /* char *, owned */
	K_INT,      /* int64_t; min..max when either is set */
	K_DOUBLE,   /* double */
	K_BOOL,     /* bool */
	K_DURATION, /* int64_t milliseconds: 500ms, 5s, 2m, 1h, 7d */
	K_SIZE,     /* int64_t bytes: 64KB; -N for N % */
	K_CHOICE,   /* int: index into choices */
	K_STRLIST,  /* struct cfg_strlist */
	K_CUSTOM,   /* custom() parses the node */
};

#define KF_REQUIRED 1u
#define KF_SECRET 2u /* a secret file (secret.h: owner, group, mode; credential:NAME) */
#define KF_FILE 4u   /* a file that must be readable */
/* as written, not what counts: the type's check decodes it into another
 * field that its equal hook compares (register/register_hex) */
#define KF_NOCMP 8u

struct cfg_loader;
struct cfg_key;
struct fy_node;
typedef int (*cfg_custom_fn)(struct cfg_loader *ld, const struct cfg_key *k, struct fy_node *val,
			     void *obj);

struct cfg_key {
	const char *name;
	enum ktype type;
	size_t off;      /* of the field in the table's struct */
	const char *def; /* default, as it would be written; NULL: none */
	unsigned flags;  /* KF_* */
	int64_t min, max;
	const char *const *choices; /* K_CHOICE: NULL-terminated */
	cfg_custom_fn custom;       /* K_CUSTOM */
	const char *help;
};

#define CFG_OFF(type, field) offsetof(type, field)

/* How the devices on a bus are addressed (what the device checks ask). */
enum cfg_devices {
	CFG_DEVICES_MODBUS, /* Modbus points; unit 0..247 or 255 */
	CFG_DEVICES_RTU,    /* Modbus points on an RTU line: unit 1..247, required */
	CFG_DEVICES_MQTT,   /* MQTT profiles; a topic per device */
};

struct driver_ops;

struct cfg_bus_type {
	const char *name; /* the `type:` word */
	const char *help; /* a few words for `type:` in --help-config */
	const struct cfg_key *keys;
	size_t n_keys;    /* at most CFG_MAX_KEYS */
	size_t opts_size; /* the options struct the keys point into */
	/* A key it cannot do without, and one that may stand for it: reported
	 * as "bus 'x': missing required key 'host' (or 'listen')". */
	const char *required, *instead;
	enum cfg_devices devices;
	int variant; /* the driver's own number for the type (its transport) */
	const struct driver_ops *ops;
	/* What is particular to the type, once its keys are applied and the
	 * required key is there: errors found (reported with cfg_bus_error()).
	 * May derive fields of the options struct (free them in free). */
	int (*check)(struct cfg_loader *ld, struct cfg_bus *b);
	/* A device on the bus: fill what it takes from its bus (-1: not given). */
	void (*device_defaults)(const struct cfg_bus *b, struct cfg_device *d);
	/* Where frames go, for the unit-id check: buses with the same endpoint
	 * share unit ids. NULL, or an empty string: shared with no other bus. */
	void (*endpoint)(const struct cfg_bus *b, char *buf, size_t cap);
	/* The bus in the summary of --check-config (a device, url, host...). */
	const char *(*where)(const struct cfg_bus *b);
	/* --check-config -v: what the driver will do on the bus (NULL: nothing). */
	void (*print_plan)(const struct cgw_config *cfg, size_t bus, FILE *f);
	/* Fields the check derived: freed / compared beyond the table. NULL: none. */
	void (*free)(void *opts);
	bool (*equal)(const void *a, const void *b);
};

/* The registry (drivers/bus_types.c): every type of bus, NULL-terminated. */
extern const struct cfg_bus_type *const cfg_bus_types[];
const struct cfg_bus_type *cfg_bus_type_find(const char *name);

/* For a type's check: an error (warning) at the line of the bus's key `key`
 * (the bus's own line when key is NULL or was not given), prefixed
 * "bus 'NAME': ". */
void cfg_bus_error(struct cfg_loader *ld, const struct cfg_bus *b, const char *key, const char *fmt,
		   ...) __attribute__((format(printf, 4, 5)));
void cfg_bus_warn(struct cfg_loader *ld, const struct cfg_bus *b, const char *key, const char *fmt,
		  ...) __attribute__((format(printf, 4, 5)));
/* Was the key given in the bus's mapping (not a default)? */
bool cfg_bus_given(const struct cfg_bus *b, const char *key);
/* The configuration being loaded (other buses, the gateway's id). */
struct cgw_config *cfg_loading(struct cfg_loader *ld);
/* scheme://host[:port][/path] -> host (malloc'd), port, tls; *http for
 * http(s). 0 or -EINVAL/-ENOMEM. */
int cfg_parse_url(const char *url, char **host, int64_t *port, bool *tls, bool *http);
/* "A5 01 ff", "a501ff", "A5:01" -> bytes (malloc'd). 0 or -EINVAL/-ENOMEM. */
int cfg_parse_hex(const char *s, uint8_t **out, size_t *len);

#endif
