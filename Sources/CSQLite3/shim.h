#ifndef ANYRUNTIME_CSQLITE3_SHIM_H
#define ANYRUNTIME_CSQLITE3_SHIM_H
#include <sqlite3.h>
#endif
