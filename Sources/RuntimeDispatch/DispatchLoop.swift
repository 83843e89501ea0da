import DequeModule
import Dispatch
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A serial `DispatchQueue` used as the runtime's executor, plus the timer heap driving one timer source.
///
/// Threading: the queue is serial, so the runtime's tasks never run in parallel, although libdispatch may
/// run consecutive blocks on different OS threads. Timer and source state lives under mutexes, since
/// source handlers run on `ioQueue`.
final class DispatchLoop: Sendable {
    let queue: DispatchQueue
    /// Where source and timer handlers run: they only resume waiters, so they never contend with tasks.
    let ioQueue: DispatchQueue
    let executor: DispatchExecutor
    private static let key = DispatchSpecificKey<ObjectIdentifier>()

    private let timers = Locked(TimerQueue())
    private let pendingTimerCount = Atomic<Int>(0)
    private let timerSource: DispatchTimerSourceBox

    init(label: String) {
        queue = DispatchQueue(label: label)
        ioQueue = DispatchQueue(label: label + ".io")
        executor = DispatchExecutor(queue: queue)
        timerSource = DispatchTimerSourceBox(DispatchSource.makeTimerSource(queue: ioQueue))
        queue.setSpecific(key: Self.key, value: ObjectIdentifier(queue))
        timerSource.source.setEventHandler { [weak self] in self?.timersFired() }
        timerSource.source.schedule(deadline: .distantFuture)
        timerSource.source.activate()
    }

    /// Whether the caller runs a block of the executor's queue.
    var isOnQueue: Bool { DispatchQueue.getSpecific(key: Self.key) == ObjectIdentifier(queue) }

    // MARK: Timers

    func insertTimer(_ entry: TimerQueue.Entry) {
        let earliestChanged = timers.withLock { timers -> Bool in
            guard !entry.isCancelled else { return false }
            pendingTimerCount.add(1, ordering: .relaxed)
            return timers.insert(entry)
        }
        if earliestChanged { rearm() }
    }

    func removeTimer(_ entry: TimerQueue.Entry) {
        timers.withLock { timers in
            if timers.remove(entry) { pendingTimerCount.subtract(1, ordering: .relaxed) }
        }
    }

    var pendingTimers: Int { pendingTimerCount.load(ordering: .relaxed) }

    private func rearm() {
        // Under the timers lock, so two re-arms cannot interleave and leave a later deadline armed.
        timers.withLock { timers in
            guard let next = timers.nextDeadline else {
                timerSource.source.schedule(deadline: .distantFuture)
                return
            }
            let delay = max(0, next.nanoseconds - monotonicNow().nanoseconds)
            timerSource.source.schedule(
                deadline: .now() + .nanoseconds(Int(clamping: delay)), leeway: .microseconds(50))
        }
    }

    private func timersFired() {
        let due = timers.withLock { timers in
            let due = timers.popDue(now: monotonicNow())
            pendingTimerCount.subtract(due.count, ordering: .relaxed)
            return due
        }
        executor.firingTimers {
            for entry in due where !entry.isCancelled { entry.fire() }
        }
        rearm()
    }

    /// Cancels the timer source and drops pending timers. Waits for the source's cancel handler.
    func close() async {
        let abandoned = timers.withLock { $0.removeAll() }
        pendingTimerCount.subtract(abandoned.count, ordering: .relaxed)
        let source = timerSource
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            source.source.setCancelHandler { continuation.resume() }
            source.source.cancel()
        }
    }
}

/// `DispatchSourceTimer` is not `Sendable` on Linux.
final class DispatchTimerSourceBox: @unchecked Sendable {
    // @unchecked Sendable: DispatchSource methods (schedule, cancel, setEventHandler) are thread-safe per
    // libdispatch's documentation; the reference itself is immutable.
    let source: any DispatchSourceTimer
    init(_ source: any DispatchSourceTimer) { self.source = source }
}

/// The loop's clock: CLOCK_MONOTONIC (``RuntimeInstant/monotonicNow()``).
@inline(__always) func monotonicNow() -> RuntimeInstant { RuntimeInstant.monotonicNow() }

/// The SE-0417 task executor over a serial queue.
///
/// Jobs wait in the executor's own queue, and one block on the dispatch queue runs them in batches: a
/// `DispatchQueue.async` (a block allocated and queued) per batch rather than per job. Jobs enqueued while
/// due timers fire run first in the next batch, so that a task whose deadline passed does not wait behind
/// every runnable task (as on the libuv backend).
///
/// A queue outlives every job sent to it (blocks retain it), so a task that outlives its runtime keeps
/// working on the queue.
final class DispatchExecutor: TaskExecutor, Sendable {
    let queue: DispatchQueue
    private let batches = JobBatches()

    init(queue: DispatchQueue) {
        // Not kept alive on purpose: a task started with `Task(executorPreference:)` retains its executor, and
        // `withTaskExecutorPreference` holds it for its scope, so a task that outlives the run keeps it.
        self.queue = queue
    }

    func enqueue(_ job: consuming ExecutorJob) {
        // Never closed: a queue outlives every job sent to it.
        if case .scheduleBatch = batches.enqueue(UnownedJob(job)) { queue.async { self.runBatch() } }
    }

    /// Runs `body` (which fires due timers) marking the jobs it enqueues as urgent.
    func firingTimers(_ body: () -> Void) { batches.firingTimers(body) }

    private func runBatch() {
        // The budget spent: other blocks on the queue run, then the next batch.
        batches.runBatch(on: asUnownedTaskExecutor()) { queue.async { self.runBatch() } }
    }
}
