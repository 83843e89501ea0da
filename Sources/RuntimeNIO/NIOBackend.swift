#if NIO
import Dispatch
import NIOCore
import NIOPosix
import Runtime
import Synchronization

/// The `RuntimeBackend` over a SwiftNIO event loop: ``NIOLoopExecutor`` as the executor, a timer heap driving
/// one scheduled callback of the loop, ``EpollReadiness`` for descriptors, and for blocking work a
/// ``BlockingThreadPool`` of the run's own, or a `NIOThreadPool` the application shares.
final class NIOBackend: RuntimeBackend {
    let executorObject: NIOLoopExecutor
    private let readiness: EpollReadiness
    private let timers = Locked(Timers())
    private let pendingTimerCount = Atomic<Int>(0)
    private let blocking: Blocking
    private let closedFlag = Atomic<Bool>(false)
    /// The callback this backend cancelled itself, for an earlier deadline: NIO tells of that cancellation
    /// too, and it needs no answer.
    private let replacedCallback = Atomic<UInt64>(0)
    /// The event-loop group the run made for itself, shut down with it (nil on an application's loop).
    private let ownedGroup: MultiThreadedEventLoopGroup?
    /// Whether the owned group's thread runs.
    private let groupThreadAlive: Atomic<Bool>

    private struct Timers: ~Copyable {
        var queue = TimerQueue()
        /// The loop's callback for the earliest deadline, that deadline, and the callback's number.
        var armed: (callback: NIOScheduledCallback, deadline: RuntimeInstant, id: UInt64)?
        var nextID: UInt64 = 0
    }

    init(eventLoop: any EventLoop, ownedGroup: MultiThreadedEventLoopGroup?, configuration: NIORuntime.Configuration) throws(RuntimeError) {
        executorObject = NIOLoopExecutor(eventLoop: eventLoop)
        readiness = try EpollReadiness()
        blocking = Blocking(shared: configuration.threadPool, threads: configuration.blockingThreads)
        self.ownedGroup = ownedGroup
        groupThreadAlive = Atomic(ownedGroup != nil)
    }

    var name: String { "nio" }
    var executor: any TaskExecutor { executorObject }
    var isOnExecutor: Bool { executorObject.isOnLoop }
    var eventLoop: any EventLoop { executorObject.eventLoop }

    func now() -> RuntimeInstant { RuntimeInstant.monotonicNow() }

    // MARK: Timers

    func scheduleTimer(at deadline: RuntimeInstant, _ fire: @escaping @Sendable () -> Void) -> any BackendRegistration {
        let entry = TimerQueue.Entry(deadline: deadline, fire: fire)
        let registration = NIOTimerRegistration(entry: entry, backend: self)
        guard !closedFlag.load(ordering: .acquiring) else {
            // The run has ended: a task that outlived it is not left sleeping forever (fired on another
            // thread, never inside this call).
            LateCallbacks.deliver { if !entry.isCancelled { entry.fire() } }
            return registration
        }
        let late = timers.withLock { timers -> Bool in
            // Checked again under the lock `close()` takes to drop the timers: none slips in after it.
            if closedFlag.load(ordering: .acquiring) { return true }
            guard !entry.isCancelled else { return false }
            pendingTimerCount.add(1, ordering: .relaxed)
            if timers.queue.insert(entry) { rearm(&timers) }
            return false
        }
        if late { LateCallbacks.deliver { if !entry.isCancelled { entry.fire() } } }
        return registration
    }

    fileprivate func removeTimer(_ entry: TimerQueue.Entry) {
        // The loop's callback stays armed for the old earliest deadline: when it fires it finds nothing due
        // and arms itself for the next one (cheaper than re-arming at every cancelled timeout).
        timers.withLock { timers in
            if timers.queue.remove(entry) { pendingTimerCount.subtract(1, ordering: .relaxed) }
        }
    }

    /// Arms the loop's callback for the earliest deadline, unless it is armed for it already. Under the lock.
    private func rearm(_ timers: inout Timers) {
        guard let next = timers.queue.nextDeadline else { return }
        if let armed = timers.armed {
            if armed.deadline <= next { return }
            replacedCallback.store(armed.id, ordering: .relaxed)
            armed.callback.cancel()
        }
        // NIO's clock (NIODeadline) and RuntimeInstant both read CLOCK_MONOTONIC; a callback that fires
        // early anyway finds nothing due and arms itself again: a timer never fires early.
        let deadline = NIODeadline.uptimeNanoseconds(UInt64(max(0, next.nanoseconds)))
        do {
            timers.nextID &+= 1
            let id = timers.nextID
            let callback = try eventLoop.scheduleCallback(at: deadline, handler: TimerCallback(backend: self, id: id))
            timers.armed = (callback, next, id)
        } catch {
            // The application shut its loop down under a live runtime: timers still fire, from another thread.
            timers.armed = nil
            let delay = max(0, next.nanoseconds - now().nanoseconds)
            DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(clamping: delay))) { [weak self] in
                self?.timersFired()
            }
        }
    }

    /// The loop cancelled callback `id` itself (it shut down under a live runtime): if it was the armed one,
    /// the timers are fired and re-armed from another thread (NIO calls this under its own lock, which
    /// `rearm` takes too, through `cancel()`, under this backend's lock).
    fileprivate func callbackCancelled(_ id: UInt64) {
        if replacedCallback.load(ordering: .relaxed) == id { return }
        LateCallbacks.deliver { [weak self] in
            guard let self else { return }
            let ours = self.timers.withLock { timers -> Bool in
                guard timers.armed?.id == id else { return false }
                timers.armed = nil
                return true
            }
            if ours { self.timersFired() }
        }
    }

    /// On the loop: fires what is due (its jobs run first in the next batch), then arms for the next deadline.
    fileprivate func timersFired() {
        let due = timers.withLock { timers -> [TimerQueue.Entry] in
            timers.armed = nil
            let due = timers.queue.popDue(now: now())
            pendingTimerCount.subtract(due.count, ordering: .relaxed)
            return due
        }
        executorObject.firingTimers {
            for entry in due where !entry.isCancelled { entry.fire() }
        }
        timers.withLock { timers in
            if !closedFlag.load(ordering: .acquiring) { rearm(&timers) }
        }
    }

    // MARK: Descriptors

    func watch(
        fd: Int32,
        for events: IOEvents,
        _ ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void
    ) throws(RuntimeError) -> any BackendRegistration {
        guard !closedFlag.load(ordering: .acquiring) else {
            throw RuntimeError(.closed, "the runtime has ended; this task outlived it")
        }
        let readiness = self.readiness
        let watch = ReadinessWatch(fd: fd, events: events, ready: ready) { readiness.unregister($0) }
        try readiness.register(watch)
        return watch
    }

    func forget(fd: Int32) async { readiness.forget(fd: fd) }

    // MARK: Blocking work

    func runBlocking(_ work: @escaping @Sendable () -> Void) { blocking.submit(work) }

    func diagnostics() -> RuntimeDiagnostics {
        RuntimeDiagnostics(
            pendingTimers: pendingTimerCount.load(ordering: .relaxed),
            watchedDescriptors: readiness.watchedDescriptors,
            blockingJobsInFlight: blocking.jobsInFlight,
            // The run's own loop thread, readiness thread and pool threads; an application's loop is not ours.
            ownedThreads: readiness.threadCount + blocking.threadCount + (groupThreadAlive.load(ordering: .acquiring) ? 1 : 0),
            isClosed: closedFlag.load(ordering: .acquiring))
    }

    // MARK: Shutdown

    /// Ends the run: waits for blocking work (up to a bound), stops the readiness thread and drops the timers.
    /// The loop keeps running the run's jobs until ``releaseLoop()``.
    func close() async {
        await blocking.shutdown()
        await readiness.close()
        let abandoned = timers.withLock { timers -> [TimerQueue.Entry] in
            closedFlag.store(true, ordering: .releasing)
            timers.armed?.callback.cancel()
            timers.armed = nil
            return timers.queue.removeAll()
        }
        pendingTimerCount.subtract(abandoned.count, ordering: .relaxed)
    }

    /// After the run's last job: later jobs go to the global executor, and the run's own loop shuts down.
    /// Called off the loop (the caller's executor, or the thread that called the synchronous `run`): a
    /// shutdown awaited on the loop itself would wait for the thread running it, and a task moved to the
    /// global executor to wait there could find it full of threads blocked in synchronous `run`s.
    func releaseLoop() async {
        executorObject.close()
        if let ownedGroup {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                ownedGroup.shutdownGracefully(queue: Self.shutdownQueue) { _ in continuation.resume() }
            }
        }
        groupThreadAlive.store(false, ordering: .releasing)
    }

    /// ``releaseLoop()`` for the thread that called the synchronous `run`. The shutdown's callback runs on a
    /// queue of its own: a synchronous `run` called from Swift's cooperative pool (a test, say) blocks one of
    /// its few threads, and a callback sent to the global queue could wait behind them.
    func releaseLoopBlocking() {
        executorObject.close()
        if let ownedGroup {
            let done = DispatchSemaphore(value: 0)
            ownedGroup.shutdownGracefully(queue: Self.shutdownQueue) { _ in done.signal() }
            done.wait()
        }
        groupThreadAlive.store(false, ordering: .releasing)
    }

    /// Where shutdown callbacks run (a serial queue of its own, not the global pool: see above).
    static let shutdownQueue = DispatchQueue(label: "anyruntime.nio.shutdown")
}

/// The loop's timer callback: fires the backend's due timers. Holds the backend weakly, so a callback still
/// scheduled keeps nothing alive.
private struct TimerCallback: NIOScheduledCallbackHandler, Sendable {
    weak var backend: NIOBackend?
    let id: UInt64
    func handleScheduledCallback(eventLoop: some EventLoop) { backend?.timersFired() }
    func didCancelScheduledCallback(eventLoop: some EventLoop) { backend?.callbackCancelled(id) }
}

/// A timer scheduled on a ``NIOBackend``.
struct NIOTimerRegistration: BackendRegistration {
    let entry: TimerQueue.Entry
    let backend: NIOBackend

    func cancel() {
        entry.markCancelled()
        backend.removeTimer(entry)
    }
}

/// Blocking work: on the run's own ``BlockingThreadPool`` (threads started on demand, as the other backends
/// have it), or on an application's `NIOThreadPool` (shared, left running when the run ends).
final class Blocking: Sendable {
    private let shared: NIOThreadPool?
    private let own: BlockingThreadPool
    /// Work in flight on the shared pool.
    private let sharedInFlight = Atomic<Int>(0)
    /// Waiting for the shared pool's work in flight to end (``shutdown()``).
    private let idleWaiter = Locked<(@Sendable () -> Void)?>(nil)

    init(shared: NIOThreadPool?, threads: Int) {
        self.shared = shared
        own = BlockingThreadPool(maximumThreads: max(1, threads))
    }

    var jobsInFlight: Int { shared == nil ? own.jobsInFlight : sharedInFlight.load(ordering: .relaxed) }
    var threadCount: Int { own.threadCount }

    func submit(_ work: @escaping @Sendable () -> Void) {
        guard let shared else { return own.submit(work) }
        sharedInFlight.add(1, ordering: .relaxed)
        let counted: @Sendable () -> Void = { [self] in
            work()
            if sharedInFlight.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
                idleWaiter.withLock { $0 }?()
            }
        }
        shared.submit { state in
            if case .active = state {
                counted()
            } else {
                // The application's pool is shutting down and runs nothing more; the work is not lost.
                LateCallbacks.deliver(counted)
            }
        }
    }

    /// The run's own pool: waits for its work (abandoned calls included) and its threads, at most 1 s; work
    /// still blocked then (stuck on a peer that stopped answering) keeps its thread, and the run ends without
    /// it. An application's pool: waits at most 1 s for the run's work in flight there, and leaves the pool
    /// running.
    func shutdown() async {
        guard shared != nil else {
            let own = self.own
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                // The shutdown blocks (up to its bound, and runs work submitted while it ends): on a queue of
                // this pool's own — never the loop, nor the queue every run's shutdown callbacks share, which
                // another run ending at the same time would wait behind it.
                DispatchQueue(label: "anyruntime.nio.blocking-shutdown").async {
                    own.shutdown()
                    continuation.resume()
                }
            }
            return
        }
        let once = Once()
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let resume: @Sendable () -> Void = { if once.first() { continuation.resume() } }
            idleWaiter.withLock { $0 = resume }
            if sharedInFlight.load(ordering: .acquiring) == 0 { resume() }
            NIOBackend.shutdownQueue.asyncAfter(deadline: .now() + .seconds(1)) { resume() }
        }
        idleWaiter.withLock { $0 = nil }
    }
}

/// True the first time only.
private final class Once: Sendable {
    private let flag = Atomic<Bool>(false)
    func first() -> Bool { !flag.exchange(true, ordering: .acquiringAndReleasing) }
}
#endif
