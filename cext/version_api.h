#ifndef MICROTRAIN_VERSION_API_H
#define MICROTRAIN_VERSION_API_H
/* Version of the C datapath; bumped when any kernel's results change. */
int mt_datapath_version(void);
#endif
