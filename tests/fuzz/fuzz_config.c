/* libFuzzer target: the configuration loader on arbitrary YAML text. It must
 * either load or return FILE:LINE errors; never crash, leak or hang. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cgw_config *cfg = NULL;
	struct cfg_errors errs = {0};

	if (size > 65536)
		return 0;
	setenv("CGW_PROFILES_DIR", "config/profiles", 0);
	if (config_load_string("fuzz.yaml", (const char *)data, size, &cfg, &errs) == 0) {
		if (errs.n)
			abort(); /* success means no errors */
		config_free(cfg);
	} else if (errs.n == 0) {
		abort(); /* failure must say why */
	}
	cfg_errors_free(&errs);
	return 0;
}
