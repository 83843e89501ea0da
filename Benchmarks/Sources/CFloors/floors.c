#include "cfloors.h"

#include <errno.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *error, size_t size, const char *what, const char *detail) {
    snprintf(error, size, "%s: %s", what, detail ? detail : "");
    return -1;
}

// Point selects i = first, first + stride, … < count against `target` (a connection string or a path).
typedef int (*point_range)(const char *target, int first, int count, int stride, long long *checksum, char *error, size_t size);

struct point_thread {
    pthread_t thread;
    point_range range;
    const char *target;
    int first, count, stride, rc;
    long long checksum;
    char error[256];
};

static void *point_thread_main(void *argument) {
    struct point_thread *t = argument;
    t->rc = t->range(t->target, t->first, t->count, t->stride, &t->checksum, t->error, sizeof t->error);
    return NULL;
}

// `count` point selects spread over `threads` threads, each with its own connection.
static int point_threads(point_range range, const char *target, int count, int threads, long long *checksum, char *error, size_t size) {
    if (threads < 1 || threads > 64) return fail(error, size, "threads", "between 1 and 64");
    struct point_thread workers[64];
    int started = 0, rc = 0;
    for (; started < threads; started++) {
        struct point_thread *t = &workers[started];
        *t = (struct point_thread){.range = range, .target = target, .first = started, .count = count, .stride = threads};
        if (pthread_create(&t->thread, NULL, point_thread_main, t) != 0) {
            rc = fail(error, size, "pthread_create", strerror(errno));
            break;
        }
    }
    long long sum = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(workers[i].thread, NULL);
        if (workers[i].rc != 0 && rc == 0) rc = fail(error, size, "thread", workers[i].error);
        sum += workers[i].checksum;
    }
    *checksum = sum;
    return rc;
}

// MARK: PostgreSQL

static PGconn *pg_connect(const char *conninfo, char *error, size_t size) {
    PGconn *conn = PQconnectdb(conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        fail(error, size, "connect", PQerrorMessage(conn));
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

// Point selects i = first, first + stride, … < count on one connection (prepared once).
static int pg_point_range(const char *conninfo, int first, int count, int stride, long long *checksum, char *error, size_t size) {
    PGconn *conn = pg_connect(conninfo, error, size);
    if (!conn) return -1;
    PGresult *prepared = PQprepare(conn, "point", "SELECT id, name, balance FROM accounts WHERE id = $1", 1, NULL);
    if (PQresultStatus(prepared) != PGRES_COMMAND_OK) {
        fail(error, size, "prepare", PQerrorMessage(conn));
        PQclear(prepared);
        PQfinish(conn);
        return -1;
    }
    PQclear(prepared);
    long long sum = 0;
    char id[32];
    for (int i = first; i < count; i += stride) {
        snprintf(id, sizeof id, "%d", (int)(((long long)i * 7919) % 100000 + 1));
        const char *values[1] = {id};
        PGresult *result = PQexecPrepared(conn, "point", 1, values, NULL, NULL, 0);
        if (PQresultStatus(result) != PGRES_TUPLES_OK || PQntuples(result) != 1) {
            fail(error, size, "point select", PQerrorMessage(conn));
            PQclear(result);
            PQfinish(conn);
            return -1;
        }
        // Decoded to native values, like the Swift rows.
        long long row_id = atoll(PQgetvalue(result, 0, 0));
        size_t name_length = strlen(PQgetvalue(result, 0, 1));
        long long balance = atoll(PQgetvalue(result, 0, 2));
        sum += row_id + (long long)name_length + balance;
        PQclear(result);
    }
    *checksum = sum;
    PQfinish(conn);
    return 0;
}

int cf_pg_point_seq(const char *conninfo, int count, long long *checksum, char *error, size_t size) {
    return pg_point_range(conninfo, 0, count, 1, checksum, error, size);
}

int cf_pg_point_threads(const char *conninfo, int count, int threads, long long *checksum, char *error, size_t size) {
    return point_threads(pg_point_range, conninfo, count, threads, checksum, error, size);
}

int cf_pg_fetch_all(const char *conninfo, long long *checksum, char *error, size_t size) {
    PGconn *conn = pg_connect(conninfo, error, size);
    if (!conn) return -1;
    PGresult *result = PQexecParams(conn, "SELECT id, name, balance FROM accounts", 0, NULL, NULL, NULL, NULL, 0);
    if (PQresultStatus(result) != PGRES_TUPLES_OK) {
        fail(error, size, "fetch", PQerrorMessage(conn));
        PQclear(result);
        PQfinish(conn);
        return -1;
    }
    long long sum = 0;
    int rows = PQntuples(result);
    for (int row = 0; row < rows; row++) {
        sum += atoll(PQgetvalue(result, row, 0)) + (long long)strlen(PQgetvalue(result, row, 1)) + atoll(PQgetvalue(result, row, 2));
    }
    *checksum = sum;
    PQclear(result);
    PQfinish(conn);
    return 0;
}

int cf_pg_insert_pipeline(const char *conninfo, int count, char *error, size_t size) {
    PGconn *conn = pg_connect(conninfo, error, size);
    if (!conn) return -1;
    PGresult *r = PQexec(conn, "TRUNCATE accounts_ins");
    PQclear(r);
    if (!PQenterPipelineMode(conn)) return fail(error, size, "pipeline", PQerrorMessage(conn));
    PQsendQueryParams(conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0);
    PQsendPrepare(conn, "ins", "INSERT INTO accounts_ins (id, name, balance) VALUES ($1, $2, $3)", 3, NULL);
    char id[32], name[48], balance[32];
    for (int i = 1; i <= count; i++) {
        snprintf(id, sizeof id, "%d", i);
        snprintf(name, sizeof name, "user-%d", i);
        snprintf(balance, sizeof balance, "%lld", (long long)i * 10);
        const char *values[3] = {id, name, balance};
        if (!PQsendQueryPrepared(conn, "ins", 3, values, NULL, NULL, 0)) return fail(error, size, "send", PQerrorMessage(conn));
    }
    PQsendQueryParams(conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0);
    PQpipelineSync(conn);
    int failed = 0;
    for (;;) {
        PGresult *result = PQgetResult(conn);
        if (!result) continue;  // the end of one command's results
        ExecStatusType status = PQresultStatus(result);
        if (status == PGRES_FATAL_ERROR) failed = 1;
        PQclear(result);
        if (status == PGRES_PIPELINE_SYNC) break;
    }
    PQexitPipelineMode(conn);
    if (failed) {
        fail(error, size, "insert", PQerrorMessage(conn));
        PQfinish(conn);
        return -1;
    }
    PQfinish(conn);
    return 0;
}

/* COPY FROM STDIN of `count` rows (id, 'user-<id>', id * 10) in text format, sent in 64 KiB pieces: the same
   rows SQLAsync's copy(_:into:columns:) sends. */
int cf_pg_copy(const char *conninfo, int count, char *error, size_t size) {
    PGconn *conn = pg_connect(conninfo, error, size);
    if (!conn) return -1;
    PGresult *r = PQexec(conn, "TRUNCATE accounts_ins");
    PQclear(r);
    r = PQexec(conn, "COPY accounts_ins (id, name, balance) FROM STDIN");
    if (PQresultStatus(r) != PGRES_COPY_IN) {
        PQclear(r);
        fail(error, size, "copy", PQerrorMessage(conn));
        PQfinish(conn);
        return -1;
    }
    PQclear(r);
    static char buffer[65536 + 128];
    size_t used = 0;
    for (int i = 1; i <= count; i++) {
        used += (size_t)snprintf(buffer + used, 128, "%d\tuser-%d\t%lld\n", i, i, (long long)i * 10);
        if (used >= 65536) {
            if (PQputCopyData(conn, buffer, (int)used) != 1) return fail(error, size, "copy data", PQerrorMessage(conn));
            used = 0;
        }
    }
    if (used > 0 && PQputCopyData(conn, buffer, (int)used) != 1) return fail(error, size, "copy data", PQerrorMessage(conn));
    if (PQputCopyEnd(conn, NULL) != 1) return fail(error, size, "copy end", PQerrorMessage(conn));
    r = PQgetResult(conn);
    int failed = PQresultStatus(r) != PGRES_COMMAND_OK;
    if (failed) fail(error, size, "copy", PQerrorMessage(conn));
    PQclear(r);
    while ((r = PQgetResult(conn)) != NULL) PQclear(r);
    PQfinish(conn);
    return failed ? -1 : 0;
}

// MARK: SQLite

static sqlite3 *sq_open(const char *path, char *error, size_t size) {
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        fail(error, size, "open", db ? sqlite3_errmsg(db) : "out of memory");
        sqlite3_close(db);
        return NULL;
    }
    // As SQLAsync does: wait for another connection's lock (several threads open at once) instead of failing.
    sqlite3_busy_timeout(db, 5000);
    sqlite3_exec(db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
    return db;
}

// Point selects number first, first + stride, … below count, on one connection of its own.
static int sq_point_range(const char *path, int first, int count, int stride, long long *checksum, char *error, size_t size) {
    sqlite3 *db = sq_open(path, error, size);
    if (!db) return -1;
    sqlite3_stmt *statement = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id, name, balance FROM accounts WHERE id = ?", -1, &statement, NULL) != SQLITE_OK) {
        fail(error, size, "prepare", sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    long long sum = 0;
    for (int i = first; i < count; i += stride) {
        sqlite3_bind_int64(statement, 1, ((long long)i * 7919) % 100000 + 1);
        if (sqlite3_step(statement) != SQLITE_ROW) {
            fail(error, size, "step", sqlite3_errmsg(db));
            sqlite3_finalize(statement);
            sqlite3_close(db);
            return -1;
        }
        sum += sqlite3_column_int64(statement, 0) + sqlite3_column_bytes(statement, 1) + sqlite3_column_int64(statement, 2);
        sqlite3_reset(statement);
    }
    *checksum = sum;
    sqlite3_finalize(statement);
    sqlite3_close(db);
    return 0;
}

int cf_sq_point_seq(const char *path, int count, long long *checksum, char *error, size_t size) {
    return sq_point_range(path, 0, count, 1, checksum, error, size);
}

int cf_sq_point_threads(const char *path, int count, int threads, long long *checksum, char *error, size_t size) {
    return point_threads(sq_point_range, path, count, threads, checksum, error, size);
}

int cf_sq_fetch_all(const char *path, long long *checksum, char *error, size_t size) {
    sqlite3 *db = sq_open(path, error, size);
    if (!db) return -1;
    sqlite3_stmt *statement = NULL;
    if (sqlite3_prepare_v2(db, "SELECT id, name, balance FROM accounts", -1, &statement, NULL) != SQLITE_OK) {
        fail(error, size, "prepare", sqlite3_errmsg(db));
        sqlite3_close(db);
        return -1;
    }
    long long sum = 0;
    while (sqlite3_step(statement) == SQLITE_ROW) {
        sum += sqlite3_column_int64(statement, 0) + sqlite3_column_bytes(statement, 1) + sqlite3_column_int64(statement, 2);
        (void)sqlite3_column_text(statement, 1);
    }
    *checksum = sum;
    sqlite3_finalize(statement);
    sqlite3_close(db);
    return 0;
}

int cf_sq_insert_bulk(const char *path, int count, char *error, size_t size) {
    sqlite3 *db = sq_open(path, error, size);
    if (!db) return -1;
    sqlite3_exec(db, "DELETE FROM accounts_ins", NULL, NULL, NULL);
    sqlite3_stmt *statement = NULL;
    sqlite3_prepare_v2(db, "INSERT INTO accounts_ins (id, name, balance) VALUES (?, ?, ?)", -1, &statement, NULL);
    sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
    char name[48];
    for (int i = 1; i <= count; i++) {
        int length = snprintf(name, sizeof name, "user-%d", i);
        sqlite3_bind_int64(statement, 1, i);
        sqlite3_bind_text(statement, 2, name, length, SQLITE_TRANSIENT);
        sqlite3_bind_int64(statement, 3, (long long)i * 10);
        if (sqlite3_step(statement) != SQLITE_DONE) {
            fail(error, size, "insert", sqlite3_errmsg(db));
            sqlite3_finalize(statement);
            sqlite3_close(db);
            return -1;
        }
        sqlite3_reset(statement);
    }
    sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    sqlite3_finalize(statement);
    sqlite3_close(db);
    return 0;
}
