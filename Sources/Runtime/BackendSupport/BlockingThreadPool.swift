import DequeModule
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A bounded pool of worker threads for backends that run blocking closures on threads they own.
///
/// Threads start on demand up to `maximumThreads` and live until ``shutdown()``, which waits for every
/// submitted closure (abandoned ones included) and joins every thread, so that no thread outlives the runtime.
public final class BlockingThreadPool: @unchecked Sendable {
    // @unchecked Sendable: every mutable field below is read and written only between
    // pthread_mutex_lock(mutex) and pthread_mutex_unlock(mutex); the pthread objects are created in init
    // and destroyed in deinit, when no thread can reach the pool any more (each thread holds a retain).
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let wakeWorkers = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
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
    }

    deinit {
        pthread_cond_destroy(wakeWorkers)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
        wakeWorkers.deallocate()
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

    /// Runs `work` on a pool thread. Nothing submitted is lost: while ``shutdown()`` runs, the job runs
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
            // No new thread: the job waits for a running thread, or for shutdown(), which runs leftovers.
            Unmanaged<BlockingThreadPool>.fromOpaque(context).release()
            if !detached { locked { starting -= 1 } }
            return
        }
        if detached {
            pthread_detach(thread)  // it runs the queue empty and exits; nobody joins it
        } else {
            locked {
                starting -= 1
                threads.append(thread)
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
        pthread_mutex_unlock(mutex)
    }

    /// Runs every queued closure, lets running ones finish, and joins every thread. Blocks the caller.
    public func shutdown() {
        let running = locked { () -> [pthread_t] in
            shuttingDown = true
            pthread_cond_broadcast(wakeWorkers)
            return threads
        }
        // Called from one of the pool's own jobs (an object shutting its pool down in its deinit, released on
        // the pool's thread): that thread cannot join itself; it is detached and ends after this job.
        let current = pthread_self()
        for thread in running {
            if pthread_equal(thread, current) != 0 { pthread_detach(thread) } else { pthread_join(thread, nil) }
        }
        // Jobs submitted after the threads left run here; the queue is found empty and the pool marked shut
        // down in one critical section, so a job submitted meanwhile is either run here or gets its own thread.
        while true {
            let job = locked { () -> (@Sendable () -> Void)? in
                if let job = queue.popFirst() {
                    queued.store(queue.count, ordering: .relaxed)
                    return job
                }
                threads.removeAll()
                shutDown = true
                return nil
            }
            guard let job else { return }
            job()
            locked { inFlight -= 1 }
        }
    }
}
