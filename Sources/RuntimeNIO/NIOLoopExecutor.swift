#if NIO
import NIOCore
import Runtime

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

    private let batches = JobBatches()

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        switch batches.enqueue(job) {
        case .queued: break
        case .scheduleBatch: eventLoop.execute { self.runBatch() }
        case .refused: globalConcurrentExecutor.enqueue(ExecutorJob(job))
        }
    }

    /// Whether the calling thread is the loop's.
    var isOnLoop: Bool { eventLoop.inEventLoop }

    /// Runs `body` (which fires due timers) marking the jobs it enqueues as urgent.
    func firingTimers(_ body: () -> Void) { batches.firingTimers(body) }

    /// Ends the run: from now on jobs go to the global executor, and those still queued go there too (they
    /// belong to tasks that outlived the run; the loop may shut down before it would run them).
    func close() {
        for job in batches.close() { globalConcurrentExecutor.enqueue(ExecutorJob(job)) }
    }

    private func runBatch() {
        // The budget spent: the loop's other work (the application's channels) runs, then the next batch.
        batches.runBatch(on: asUnownedTaskExecutor()) { eventLoop.execute { self.runBatch() } }
    }
}
#endif
