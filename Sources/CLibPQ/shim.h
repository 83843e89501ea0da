#ifndef ANYRUNTIME_CLIBPQ_SHIM_H
#define ANYRUNTIME_CLIBPQ_SHIM_H
#include <postgresql/libpq-fe.h>
#endif
