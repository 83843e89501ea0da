#ifndef ANYRUNTIME_CLIBUV_SHIM_H
#define ANYRUNTIME_CLIBUV_SHIM_H
#include <uv.h>
#endif
