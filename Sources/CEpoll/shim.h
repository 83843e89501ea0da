#ifndef ANYRUNTIME_CEPOLL_SHIM_H
#define ANYRUNTIME_CEPOLL_SHIM_H
// epoll and eventfd, which Glibc's Swift module leaves out: the NIO backend's readiness thread waits on them.
#ifdef __linux__
#include <sys/epoll.h>
#include <sys/eventfd.h>
#endif
#endif
