/*
 * driver.c - which driver serves a bus: its type says (config_keys.h).
 */
#include "driver.h"

#include <stddef.h>

#include "config_keys.h"

const struct driver_ops *driver_ops_for(const struct cfg_bus *b)
{
	return b && b->kind ? b->kind->ops : NULL;
}
