import DequeModule
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A bounded pool of worker threads for backends that run blocking closures on threads they own.
///
/// Threads start on demand up to `maximumThreads` and live until ``shutdown(waitingAtMost:)``, which waits for
/// every submitted closure (abandoned ones included) and joins every thread, so that no thread outlives the
/// runtime — up to a bound: a closure still blocked then (a call to a server that stopped answering) keeps its
/// thread, detached, and the runtime ends without it.
public final class BlockingThreadPool: @unchecked Sendable {
    // @unchecked Sendable: every mutable field below is read and written only between
    // pthread_mutex_lock(mutex) and pthread_mutex_unlock(mutex); the pthread objects are created in init
    // and destroyed in deinit, when no thread can reach the pool any more (each thread holds a retain).
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wakeWorkers = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Signalled by a pooled thread as it leaves, for a shutdown waiting with a bound (on CLOCK_MONOTONIC).
    private let threadLeft = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Pooled threads that have left their loop (joining them takes no time).
    private var leftThreads: [pthread_t] = []
    private var queue = Deque<@Sendable () -> Void>()
    private var threads: [pthread_t] = []
    private var starting = 0  // threads reserved under the lock, not yet in `threads`
    private var idle = 0
    private var inFlight = 0
    private var shuttingDown = false
    private var shutDown = false
    /// `queue.count`, written under the lock and read without it by a spinning worker.
    private let queued = Atomic<Int>(0)

    /// The most threads the pool starts.
    public let maximumThreads: Int

    /// - Parameter maximumThreads: the bound on threads (≥ 1).
    public init(maximumThreads: Int) {
        self.maximumThreads = max(1, maximumThreads)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(wakeWorkers, nil)
        #if canImport(Glibc)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(threadLeft, &attributes)
        pthread_condattr_destroy(&attributes)
        #else
        pthread_cond_init(threadLeft, nil)  // timed waits on the realtime clock (Darwin has no setclock)
        #endif
    }

    deinit {
        pthread_cond_destroy(wakeWorkers)
        pthread_cond_destroy(threadLeft)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        wakeWorkers.deallocate()
        threadLeft.deallocate()
    }

    private func locked<R>(_ body: () -> R) -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    /// Closures submitted and not finished.
    public var jobsInFlight: Int { locked { inFlight } }
    /// Threads alive.
    public var threadCount: Int { locked { threads.count } }

    /// Runs `work` on a pool thread. Nothing submitted is lost: while ``shutdown(waitingAtMost:)`` runs, the job runs
    /// before it returns; after it returned, the job gets a detached thread of its own.
    public func submit(_ work: @escaping @Sendable () -> Void) {
        enum Spawn { case none, pooled, detached }
        let spawn = locked { () -> Spawn in
            inFlight += 1
            queue.append(work)
            queued.store(queue.count, ordering: .releasing)
            if shutDown { return .detached }
            if idle > 0 { pthread_cond_signal(wakeWorkers) }
            // An idle worker takes one queued job; start a thread for each job beyond them. (`idle` drops only
            // when a woken worker runs, so counting queued jobs against it is what keeps a burst from
            // sharing one thread.)
            guard queue.count > idle, !shuttingDown, threads.count + starting < maximumThreads else { return .none }
            starting += 1
            return .pooled
        }
        switch spawn {
        case .none: break
        case .pooled: startThread(detached: false)
        case .detached: startThread(detached: true)
        }
    }

    private func startThread(detached: Bool) {
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { context in
            // `context` is the pool retained below; this thread owns that retain.
            guard let context else { return nil }
            let pool = Unmanaged<BlockingThreadPool>.fromOpaque(context).takeRetainedValue()
            pool.workerLoop()
            return nil
        }, context)

        guard rc == 0 else {
            // No new thread: the job waits for a running thread, or for the shutdown, which hands leftovers to a thread.
            Unmanaged<BlockingThreadPool>.fromOpaque(context).release()
            if !detached {
                locked {
                    starting -= 1
                    pthread_cond_broadcast(threadLeft)  // a shutdown may be waiting for it
                }
            }
            return
        }
        if detached {
            pthread_detach(thread)  // it runs the queue empty and exits; nobody joins it
        } else {
            locked {
                starting -= 1
                threads.append(thread)
                pthread_cond_broadcast(threadLeft)  // a shutdown waits until every started thread is listed
            }
        }
    }

    private func workerLoop() {
        pthread_mutex_lock(mutex)
        var spun = false
        while true {
            var job = queue.popFirst()
            if job != nil {
                queued.store(queue.count, ordering: .relaxed)
                pthread_mutex_unlock(mutex)
                job?()
                // Released before the lock is taken again: the closure's captures may be the last references
                // to objects whose deinit submits to this pool (a connection closing itself), which would
                // deadlock on the lock.
                job = nil
                pthread_mutex_lock(mutex)
                inFlight -= 1
                spun = false
                continue
            }
            if shuttingDown { break }
            idle += 1
            if spun {
                pthread_cond_wait(wakeWorkers, mutex)
            } else {
                // Jobs often come in a sequence (one SQLite statement after another, each awaited): waiting a
                // few microseconds for the next one spares a futex sleep and wake-up (``SpinWait``). The
                // worker counts as idle meanwhile, so a job arriving now neither starts another thread nor
                // waits.
                pthread_mutex_unlock(mutex)
                _ = SpinWait.until { self.queued.load(ordering: .acquiring) > 0 }
                pthread_mutex_lock(mutex)
                spun = true
            }
            idle -= 1
        }
        // Once the pool is shut down, threads are detached (started so, or left running at the bound) and
        // nobody waits for them to leave.
        if !shutDown {
            leftThreads.append(pthread_self())
            pthread_cond_broadcast(threadLeft)
        }
        pthread_mutex_unlock(mutex)
    }

    /// Runs every queued closure, lets running ones finish, and joins every thread — waiting at most `bound`.
    /// Blocks the caller.
    ///
    /// A closure still running at the bound (blocked on a peer that stopped answering, say: one whose caller
    /// abandoned it) keeps its thread, which is detached and ends with the closure, and then runs what is
    /// still queued. Nothing submitted is lost, and the caller is not held past the bound (a queued closure
    /// runs on it only while the bound lasts).
    ///
    /// - Returns: how many threads were left running at the bound.
    @discardableResult
    public func shutdown(waitingAtMost bound: Duration = .seconds(1)) -> Int {
        let current = pthread_self()
        var deadline = Self.deadline(after: max(bound, .zero))
        let (running, left) = locked { () -> ([pthread_t], [pthread_t]) in
            shuttingDown = true
            pthread_cond_broadcast(wakeWorkers)
            // Called from one of the pool's own jobs (an object shutting its pool down in its deinit, released
            // on the pool's thread): that thread does not leave while this runs. A thread still starting is
            // waited for until it is listed, so that it is joined (or detached) with the others.
            let own = threads.contains { pthread_equal($0, current) != 0 } ? 1 : 0
            while starting > 0 || leftThreads.count < threads.count - own {
                if pthread_cond_timedwait(threadLeft, mutex, &deadline) != 0 { break }  // the bound (or an error)
            }
            return (threads, leftThreads)
        }
        var stuck = 0
        for thread in running {
            if left.contains(where: { pthread_equal($0, thread) != 0 }) {
                pthread_join(thread, nil)
            } else {
                // The calling thread itself (it cannot join itself), or a thread whose closure outlived the
                // bound: it ends after its closure, and nobody joins it.
                pthread_detach(thread)
                if pthread_equal(thread, current) == 0 { stuck += 1 }
            }
        }
        // Jobs submitted after the threads left run here, while the bound lasts (a one-thread pool stays
        // serial: nothing else runs them meanwhile); the queue is found empty and the pool marked shut down in
        // one critical section, so a job submitted meanwhile is either run here or gets its own thread. Past the
        // bound, threads left running take the queue when their closures end; with none, one detached thread
        // does.
        while true {
            let job = locked { () -> (@Sendable () -> Void)? in
                let now = Self.now()
                if (now.tv_sec, now.tv_nsec) < (deadline.tv_sec, deadline.tv_nsec), let job = queue.popFirst() {
                    queued.store(queue.count, ordering: .relaxed)
                    return job
                }
                threads.removeAll()
                leftThreads.removeAll()
                shutDown = true
                return nil
            }
            guard let job else { break }
            job()
            locked { inFlight -= 1 }
        }
        if stuck == 0, locked({ !queue.isEmpty }) { startThread(detached: true) }
        return stuck
    }

    /// Now on the clock of ``deadline(after:)``.
    private static func now() -> timespec { deadline(after: .zero) }

    /// `duration` from now, as `pthread_cond_timedwait` reads it for `threadLeft` (CLOCK_MONOTONIC; the
    /// realtime clock on Darwin), saturating.
    private static func deadline(after duration: Duration) -> timespec {
        var now = timespec()
        #if canImport(Glibc)
        clock_gettime(CLOCK_MONOTONIC, &now)
        #else
        clock_gettime(CLOCK_REALTIME, &now)
        #endif
        let start = RuntimeInstant(nanoseconds: Int64(now.tv_sec) &* 1_000_000_000 &+ Int64(now.tv_nsec))
        let end = start.advanced(by: duration).nanoseconds
        return timespec(tv_sec: Int(end / 1_000_000_000), tv_nsec: Int(end % 1_000_000_000))
    }
}
