#include "uplink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct uplink_ops *uplink_ops_for(int type)
{
	switch (type) {
	case CFG_UPLINK_MQTT:
		return &uplink_mqtt_ops;
	case CFG_UPLINK_HTTP:
		return &uplink_http_ops;
	}
	return NULL;
}
