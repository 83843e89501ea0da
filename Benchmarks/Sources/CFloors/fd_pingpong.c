// The runtime floors: RT-FD-PINGPONG written directly against libuv and libdispatch, callbacks only.
#include "cfloors.h"

#include <dispatch/dispatch.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

static int make_pair(int fds[2], char *error, size_t size) {
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
        snprintf(error, size, "socketpair: errno %d", errno);
        return -1;
    }
    for (int i = 0; i < 2; i++) fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    return 0;
}

// MARK: libuv

struct uv_state {
    int fds[2];
    int rounds;
    int done;
    uv_poll_t polls[2];
};

static void uv_on_readable(uv_poll_t *handle, int status, int events) {
    struct uv_state *state = handle->data;
    int fd = handle == &state->polls[0] ? state->fds[0] : state->fds[1];
    char byte;
    while (read(fd, &byte, 1) == 1) {
        if (handle == &state->polls[0]) {
            // The pinger got its answer: one round trip done.
            if (++state->done == state->rounds) {
                uv_poll_stop(&state->polls[0]);
                uv_poll_stop(&state->polls[1]);
                return;
            }
        }
        (void)write(fd, &byte, 1);  // the other side's turn
    }
}

int cf_uv_fd_pingpong(int rounds, char *error, size_t size) {
    struct uv_state state = {.rounds = rounds, .done = 0};
    if (make_pair(state.fds, error, size) != 0) return -1;
    uv_loop_t loop;
    uv_loop_init(&loop);
    for (int i = 0; i < 2; i++) {
        uv_poll_init(&loop, &state.polls[i], state.fds[i]);
        state.polls[i].data = &state;
        uv_poll_start(&state.polls[i], UV_READABLE, uv_on_readable);
    }
    char byte = 1;
    (void)write(state.fds[0], &byte, 1);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 2; i++) uv_close((uv_handle_t *)&state.polls[i], NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    close(state.fds[0]);
    close(state.fds[1]);
    return 0;
}

// MARK: libdispatch

struct dispatch_state {
    int fds[2];
    int rounds;
    int done;
    dispatch_source_t sources[2];
    dispatch_semaphore_t finished;
    dispatch_semaphore_t cancelled;
};

static void dispatch_cancelled(void *context) { dispatch_semaphore_signal(((struct dispatch_state *)context)->cancelled); }

static void dispatch_readable(struct dispatch_state *state, int side) {
    char byte;
    while (read(state->fds[side], &byte, 1) == 1) {
        if (side == 0 && ++state->done == state->rounds) {
            dispatch_source_cancel(state->sources[0]);
            dispatch_source_cancel(state->sources[1]);
            dispatch_semaphore_signal(state->finished);
            return;
        }
        (void)write(state->fds[side], &byte, 1);
    }
}

static void dispatch_readable0(void *context) { dispatch_readable(context, 0); }
static void dispatch_readable1(void *context) { dispatch_readable(context, 1); }

int cf_dispatch_fd_pingpong(int rounds, char *error, size_t size) {
    struct dispatch_state state = {.rounds = rounds, .done = 0};
    if (make_pair(state.fds, error, size) != 0) return -1;
    state.finished = dispatch_semaphore_create(0);
    state.cancelled = dispatch_semaphore_create(0);
    dispatch_queue_t queue = dispatch_queue_create("cfloors.pingpong", DISPATCH_QUEUE_SERIAL);
    dispatch_function_t handlers[2] = {dispatch_readable0, dispatch_readable1};
    for (int i = 0; i < 2; i++) {
        state.sources[i] = dispatch_source_create(DISPATCH_SOURCE_TYPE_READ, (uintptr_t)state.fds[i], 0, queue);
        dispatch_set_context(state.sources[i], &state);
        dispatch_source_set_event_handler_f(state.sources[i], handlers[i]);
        dispatch_source_set_cancel_handler_f(state.sources[i], dispatch_cancelled);
        dispatch_resume(state.sources[i]);
    }
    char byte = 1;
    (void)write(state.fds[0], &byte, 1);
    dispatch_semaphore_wait(state.finished, DISPATCH_TIME_FOREVER);
    // The fds are closed only after both sources' cancellation handlers ran.
    for (int i = 0; i < 2; i++) dispatch_semaphore_wait(state.cancelled, DISPATCH_TIME_FOREVER);
    for (int i = 0; i < 2; i++) dispatch_release(state.sources[i]);
    dispatch_release(state.finished);
    dispatch_release(state.cancelled);
    dispatch_release(queue);
    close(state.fds[0]);
    close(state.fds[1]);
    return 0;
}

// MARK: libuv timers (RT-TIMERS)

struct uv_timer_entry {
    uv_timer_t timer;
    long long deadline;
    long long *lateness;
};

static long long monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void uv_timer_fired(uv_timer_t *handle) {
    struct uv_timer_entry *entry = handle->data;
    *entry->lateness = monotonic_ns() - entry->deadline;
    uv_close((uv_handle_t *)handle, NULL);
}

static int compare_ll(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}

int cf_uv_timers(int count, long long *p50, long long *p99, char *error, size_t size) {
    if (count < 1) {
        snprintf(error, size, "count must be positive");
        return -1;
    }
    struct uv_timer_entry *entries = calloc((size_t)count, sizeof *entries);
    long long *lateness = calloc((size_t)count, sizeof *lateness);
    uv_loop_t loop;
    if (!entries || !lateness || uv_loop_init(&loop) != 0) {
        free(entries);
        free(lateness);
        snprintf(error, size, "out of memory, or uv_loop_init failed");
        return -1;
    }
    unsigned long long seed = 0x12345678ULL;
    for (int i = 0; i < count; i++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        long long duration = (long long)((seed >> 33) % 100000000ULL);
        struct uv_timer_entry *entry = &entries[i];
        entry->deadline = monotonic_ns() + duration;
        entry->lateness = &lateness[i];
        uv_timer_init(&loop, &entry->timer);
        entry->timer.data = entry;
        uv_update_time(&loop);
        uv_timer_start(&entry->timer, uv_timer_fired, (uint64_t)((duration + 999999) / 1000000), 0);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    qsort(lateness, (size_t)count, sizeof *lateness, compare_ll);
    *p50 = lateness[count / 2];
    *p99 = lateness[(int)((long long)count * 99 / 100)];
    free(entries);
    free(lateness);
    return 0;
}
