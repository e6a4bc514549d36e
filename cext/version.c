#include "version_api.h"

int mt_datapath_version(void) { return 1; }
