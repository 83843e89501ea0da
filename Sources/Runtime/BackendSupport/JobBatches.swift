import DequeModule

#if canImport(Glibc)
import Glibc
#endif

/// The job queue of a task executor that runs its jobs in batches on something serial of its backend's (a
/// dispatch queue, an event loop): one block or closure scheduled per batch rather than per job.
///
/// Jobs enqueued while due timers fire (``firingTimers(_:)``) run first in the next batch, so that a task
/// whose deadline passed does not wait behind every runnable task. After ``close()`` no job is taken: the
/// executor sends it elsewhere.
public final class JobBatches: Sendable {
    private struct Pending: Sendable {
        var jobs = Deque<UnownedJob>()
        var urgent: [UnownedJob] = []
        /// Whether a batch is scheduled or running.
        var scheduled = false
        /// The thread firing due timers, if one is: what it enqueues is urgent.
        var firingThread: pthread_t?
        var closed = false
    }

    private let pending = Locked(Pending())
    /// Jobs per batch: whatever else the serial thing runs waits for a batch.
    private let batchSize: Int

    public init(batchSize: Int = 128) {
        self.batchSize = batchSize
    }

    /// What the executor does after ``enqueue(_:)``.
    public enum Enqueued: Sendable {
        /// Nothing: a batch is scheduled already and will run the job.
        case queued
        /// Schedule a batch (``runBatch(on:reschedule:)``).
        case scheduleBatch
        /// The queue is closed and did not take the job: run it elsewhere.
        case refused
    }

    public func enqueue(_ job: UnownedJob) -> Enqueued {
        pending.withLock { pending -> Enqueued in
            if pending.closed { return .refused }
            if let firing = pending.firingThread, pthread_equal(firing, pthread_self()) != 0 {
                pending.urgent.append(job)
            } else {
                pending.jobs.append(job)
            }
            if pending.scheduled { return .queued }
            pending.scheduled = true
            return .scheduleBatch
        }
    }

    /// Runs `body` (which fires due timers) marking the jobs it enqueues as urgent.
    public func firingTimers(_ body: () -> Void) {
        pending.withLock { $0.firingThread = pthread_self() }
        body()
        pending.withLock { $0.firingThread = nil }
    }

    /// Takes no more jobs; returns those still queued, for the executor to send elsewhere.
    public func close() -> [UnownedJob] {
        pending.withLock { pending -> [UnownedJob] in
            pending.closed = true
            defer {
                pending.urgent.removeAll()
                pending.jobs.removeAll()
            }
            return pending.urgent + Array(pending.jobs)
        }
    }

    /// Runs urgent jobs first, and others until none is left or the batch size ran; calls `reschedule` (to
    /// schedule another batch after the serial thing's other work) when jobs remain.
    public func runBatch(on executor: UnownedTaskExecutor, reschedule: () -> Void) {
        var budget = batchSize
        while true {
            let (urgent, jobs, more) = pending.withLock { pending -> ([UnownedJob], [UnownedJob], Bool) in
                if pending.jobs.isEmpty && pending.urgent.isEmpty {
                    pending.scheduled = false
                    return ([], [], false)
                }
                if budget <= 0 { return ([], [], true) }
                let urgent = pending.urgent
                pending.urgent.removeAll()
                let count = min(pending.jobs.count, budget)
                let jobs = Array(pending.jobs.prefix(count))
                pending.jobs.removeFirst(count)
                return (urgent, jobs, true)
            }
            guard more else { return }
            if urgent.isEmpty && jobs.isEmpty {
                reschedule()
                return
            }
            for job in urgent { job.runSynchronously(on: executor) }
            for job in jobs { job.runSynchronously(on: executor) }
            budget -= urgent.count + jobs.count
        }
    }
}
