// The C floors: the raw libraries doing each SQL workload synchronously, as no wrapper can beat them.
// Each function returns 0 on success, or -1 with a message in `error` (at most `error_size` bytes).
#ifndef CFLOORS_H
#define CFLOORS_H

#include <stddef.h>

// PostgreSQL (libpq, blocking). `conninfo` is a libpq connection string or URL.
int cf_pg_point_seq(const char *conninfo, int count, long long *checksum, char *error, size_t error_size);
// `count` point selects spread over `threads` threads, each with its own connection.
int cf_pg_point_threads(const char *conninfo, int count, int threads, long long *checksum, char *error, size_t error_size);
int cf_pg_fetch_all(const char *conninfo, long long *checksum, char *error, size_t error_size);
int cf_pg_insert_pipeline(const char *conninfo, int count, char *error, size_t error_size);
int cf_pg_copy(const char *conninfo, int count, char *error, size_t error_size);

// SQLite (sqlite3, on the calling thread). `path` is a database file.
int cf_sq_point_seq(const char *path, int count, long long *checksum, char *error, size_t error_size);
// `count` point selects spread over `threads` threads, each with its own connection.
int cf_sq_point_threads(const char *path, int count, int threads, long long *checksum, char *error, size_t error_size);
int cf_sq_fetch_all(const char *path, long long *checksum, char *error, size_t error_size);
int cf_sq_insert_bulk(const char *path, int count, char *error, size_t error_size);

// Runtime floors: two one-byte ping-pongs over a socketpair, `rounds` round trips, on one thread driven by
// the library's own callbacks (libuv uv_poll) or on one serial queue (libdispatch read sources).
int cf_uv_fd_pingpong(int rounds, char *error, size_t error_size);
int cf_dispatch_fd_pingpong(int rounds, char *error, size_t error_size);
// RT-TIMERS on libuv's own timers: `count` timers of 0-100 ms (the benchmark's pseudo-random durations, in
// libuv's whole milliseconds, rounded up), on one loop; the lateness percentiles in nanoseconds.
int cf_uv_timers(int count, long long *p50, long long *p99, char *error, size_t error_size);

#endif
