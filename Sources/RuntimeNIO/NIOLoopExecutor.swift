#if NIO
import DequeModule
import NIOCore
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// The SE-0417 task executor over a SwiftNIO `EventLoop`.
///
/// swift-nio 2.101's loops are serial executors, not task executors, so this wraps one: jobs wait in a queue
/// of their own, and one `execute` on the loop runs them in batches — a closure allocated and queued per batch
/// rather than per job. Jobs enqueued while due timers fire run first in the next batch, so a task whose
/// deadline passed does not wait behind every runnable task (as on the other backends).
///
/// After the run (``close()``), jobs go to Swift's global executor: a task that outlived its run keeps going,
/// and nothing is queued on a loop that may have shut down.
final class NIOLoopExecutor: TaskExecutor, Sendable {
    let eventLoop: any EventLoop

    private struct Pending: Sendable {
        var jobs = Deque<UnownedJob>()
        var urgent: [UnownedJob] = []
        /// Whether a batch is queued on the loop or running.
        var scheduled = false
        /// The thread firing due timers, if one is: what it enqueues is urgent.
        var firingThread: pthread_t?
        var closed = false
    }
    private let pending = Locked(Pending())
    /// Jobs per batch: other work of the loop (the application's channels) waits for a batch.
    private static let batchSize = 128

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        enum Next { case nothing, schedule, global }
        let next = pending.withLock { pending -> Next in
            if pending.closed { return .global }
            if let firing = pending.firingThread, pthread_equal(firing, pthread_self()) != 0 {
                pending.urgent.append(job)
            } else {
                pending.jobs.append(job)
            }
            if pending.scheduled { return .nothing }
            pending.scheduled = true
            return .schedule
        }
        switch next {
        case .nothing: break
        case .schedule: eventLoop.execute { self.runBatch() }
        case .global: globalConcurrentExecutor.enqueue(ExecutorJob(job))
        }
    }

    /// Whether the calling thread is the loop's.
    var isOnLoop: Bool { eventLoop.inEventLoop }

    /// Runs `body` (which fires due timers) marking the jobs it enqueues as urgent.
    func firingTimers(_ body: () -> Void) {
        pending.withLock { $0.firingThread = pthread_self() }
        body()
        pending.withLock { $0.firingThread = nil }
    }

    /// Ends the run: from now on jobs go to the global executor, and those still queued go there too (they
    /// belong to tasks that outlived the run; the loop may shut down before it would run them).
    func close() {
        let left = pending.withLock { pending -> [UnownedJob] in
            pending.closed = true
            defer {
                pending.urgent.removeAll()
                pending.jobs.removeAll()
            }
            return pending.urgent + Array(pending.jobs)
        }
        for job in left { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }

    /// Runs urgent jobs first, and others until none is left or ``batchSize`` ran; queues another batch if
    /// jobs remain.
    private func runBatch() {
        let executor = asUnownedTaskExecutor()
        var budget = Self.batchSize
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
                // The budget is spent: let the loop's other work run, then go on.
                eventLoop.execute { self.runBatch() }
                return
            }
            for job in urgent { job.runSynchronously(on: executor) }
            for job in jobs { job.runSynchronously(on: executor) }
            budget -= urgent.count + jobs.count
        }
    }
}
#endif
