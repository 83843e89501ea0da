#ifndef ANYRUNTIME_CLIBPQ_SHIM_H
#define ANYRUNTIME_CLIBPQ_SHIM_H
#include <postgresql/libpq-fe.h>
#include <string.h>
#include <sys/socket.h>

/*
 * What a cancel request needs: the server's address, the backend's process ID and its secret key. libpq 15
 * sends cancel requests only blockingly (PQcancel connects and then waits, without a time limit, for the server
 * to close the connection) and does not export the secret key; its non-blocking cancel API arrives in libpq 17.
 * A PGcancel (private to libpq) begins, in every release from 9.x through 17, with these fields: the server's
 * socket address with its length, the backend's process ID and the secret key (libpq 18 changed what follows
 * the process ID). This reads them so the driver can send the 16-byte request itself, without blocking. The
 * caller checks PQlibVersion first, and the result: the address family is one libpq connects with, the length
 * fits, the process ID equals PQbackendPID — otherwise it does not use it.
 */
typedef struct {
    struct sockaddr_storage addr;
    socklen_t length;
} anyruntime_pq_address;

typedef struct {
    anyruntime_pq_address server;
    int process_id;
    int secret;
} anyruntime_pq_cancel_prefix;

static inline void anyruntime_pq_cancel_fields(
    const PGcancel *cancel, struct sockaddr_storage *address, socklen_t *length, int *process_id, int *secret) {
    const anyruntime_pq_cancel_prefix *prefix = (const anyruntime_pq_cancel_prefix *)cancel;
    memcpy(address, &prefix->server.addr, sizeof(struct sockaddr_storage));
    *length = prefix->server.length;
    *process_id = prefix->process_id;
    *secret = prefix->secret;
}
#endif
