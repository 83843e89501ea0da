import CLibUV
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The libuv backend: one libuv loop per run, a timer heap driving one `timerfd` (a `uv_timer` where there is
/// none), one `uv_poll` per fd, cross-thread wake-ups through `uv_async` (after a short spin while a result
/// from another thread is due), and a bounded thread pool for blocking work.
///
/// ```swift
/// // In main: the loop runs on the calling thread.
/// try UVRuntime.run {
///     try await Runtime.sleep(for: .milliseconds(10))
/// }
///
/// // Inside Swift concurrency: the loop gets a thread of its own for the duration of the call.
/// try await UVRuntime.run { … }
/// ```
///
/// When `run` returns, every handle is closed, `uv_loop_close` has succeeded and every thread the run
/// started has been joined.
public enum UVRuntime {
    /// Tuning for one run.
    public struct Configuration: Sendable {
        /// The most threads for blocking work (default 64). `Runtime.defaultBlockingLimiter` bounds how
        /// many closures use them at once.
        public var blockingThreads = 64
        /// The size of `Runtime.defaultBlockingLimiter` (default 40, as in anyio).
        public var blockingTokens = 40
        /// How many jobs run between two polls for IO and timers (default 128).
        public var jobsBetweenPolls = 128

        public init() {}
    }

    /// Runs `body` on a new libuv loop driven by the calling thread, and returns when it finished (anyio's
    /// `run`). For `main` and other synchronous code.
    ///
    /// - Throws: what `body` throws; `RuntimeError.Code.backendFailure` when the loop could not be closed.
    /// - Warning: Blocks the calling thread. Do not call it from a task of another runtime.
    public static func run<T: Sendable>(
        configuration: Configuration = Configuration(),
        _ body: @escaping @Sendable () async throws -> T
    ) throws -> T {
        let backend = UVBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        backend.loop.adoptCurrentThread()
        let root = RootTask(runtime: runtime, body) { backend.loop.stop() }
        backend.loop.drive()
        try backend.close()
        return try root.result()
    }

    /// Runs `body` on a new libuv loop with a thread of its own, from code already inside Swift concurrency.
    ///
    /// The calling task runs `body` on the loop (it prefers the loop's executor) and comes back to its own
    /// executor afterwards. Cancelling the calling task cancels every runtime wait inside.
    ///
    /// - Throws: what `body` throws; `RuntimeError.Code.backendFailure` when the loop could not start or close.
    public static func run<T>(
        configuration: Configuration = Configuration(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        let backend = UVBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        try backend.startThread()
        return try await runtime.enter(isolation: isolation, body, afterwards: { try await backend.stopThread() })
    }
}

/// The `RuntimeBackend` over a ``UVLoop``.
final class UVBackend: RuntimeBackend, OutsideWorkTracking {
    /// Owns the loop; held here for the run, and by every task that prefers it.
    private let executorObject: UVExecutor
    var loop: UVLoop { executorObject.loop }
    private let pool: BlockingThreadPool
    private let thread = Locked<LoopThread?>(nil)
    private let closedFlag = Atomic<Bool>(false)
    private let closeResult = Atomic<Int32>(0)

    init(configuration: UVRuntime.Configuration) {
        executorObject = UVExecutor(jobsBetweenPolls: configuration.jobsBetweenPolls)
        pool = BlockingThreadPool(maximumThreads: configuration.blockingThreads)
    }

    var name: String { "uv" }
    var executor: any TaskExecutor { executorObject }
    var isOnExecutor: Bool { loop.isOnLoopThread }

    func now() -> RuntimeInstant { monotonicNow() }

    func scheduleTimer(at deadline: RuntimeInstant, _ fire: @escaping @Sendable () -> Void) -> any BackendRegistration {
        let entry = TimerQueue.Entry(deadline: deadline, fire: fire)
        let loop = self.loop
        // After the run ended (a task that outlived it), the timer fires at once rather than never.
        loop.execute(
            { loop.insertTimer(entry) },
            ifClosed: { LateCallbacks.deliver { if !entry.isCancelled { entry.fire() } } })
        return UVTimerRegistration(entry: entry, loop: loop)
    }

    func watch(
        fd: Int32,
        for events: IOEvents,
        _ ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void
    ) throws(RuntimeError) -> any BackendRegistration {
        let watch = UVWatch(fd: fd, events: events, loop: loop, ready: ready)
        guard !loop.isClosed else { throw Self.closedError }
        if loop.isOnLoopThread {
            try loop.register(watch)
        } else {
            // Off the loop thread the registration is queued; a refusal reaches the waiter through `ready`.
            let loop = self.loop
            loop.submit(.closure({
                do throws(RuntimeError) {
                    try loop.register(watch)
                } catch {
                    watch.finish(.failure(error))
                }
            }, ifClosed: { LateCallbacks.deliver { watch.finish(.failure(Self.closedError)) } }))
        }
        return watch
    }

    func forget(fd: Int32) async {
        if loop.isOnLoopThread && !loop.isClosed {
            loop.forgetOnLoop(fd: fd)
            return
        }
        let loop = self.loop
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            loop.submit(.closure({
                loop.forgetOnLoop(fd: fd)
                continuation.resume()
            }, ifClosed: { continuation.resume() }))  // closed: every registration is gone already
        }
    }

    static var closedError: RuntimeError {
        RuntimeError(.closed, "the runtime has ended; this task outlived it")
    }

    func runBlocking(_ work: @escaping @Sendable () -> Void) {
        let loop = self.loop
        loop.outsideWork.add(1, ordering: .relaxed)
        pool.submit {
            work()
            loop.outsideWork.subtract(1, ordering: .relaxed)
        }
    }

    // Outside work (a `Runtime.withCompletion` resumed by another thread: a SQLite call on its connection's
    // thread, say) makes the loop spin briefly before it sleeps.
    func outsideWorkStarted() { loop.outsideWork.add(1, ordering: .relaxed) }
    func outsideWorkFinished() { loop.outsideWork.subtract(1, ordering: .relaxed) }

    func diagnostics() -> RuntimeDiagnostics {
        let threadAlive = thread.withLock { $0 != nil }
        return RuntimeDiagnostics(
            pendingTimers: loop.pendingTimers,
            watchedDescriptors: loop.watchedCount.load(ordering: .relaxed),
            blockingJobsInFlight: pool.jobsInFlight,
            ownedThreads: pool.threadCount + (threadAlive ? 1 : 0),
            isClosed: closedFlag.load(ordering: .acquiring) && closeResult.load(ordering: .relaxed) == 0)
    }

    // MARK: Lifecycle

    /// Closes the loop on the calling (loop) thread after `drive()` returned.
    func close() throws(RuntimeError) {
        let rc = loop.close(beforeClosing: { pool.shutdown() })
        closeResult.store(rc, ordering: .relaxed)
        closedFlag.store(true, ordering: .releasing)
        if rc != 0 {
            throw RuntimeError(.backendFailure, "uv_loop_close failed: \(String(cString: uv_strerror(rc)))")
        }
    }

    /// Starts a thread that drives the loop until ``stopThread()``, then closes it.
    func startThread() throws(RuntimeError) {
        let loop = self.loop
        let thread = try LoopThread.start(prepare: { loop.adoptCurrentThread() }) { [self] in
            loop.drive()
            let result: Result<Void, RuntimeError>
            do throws(RuntimeError) {
                try close()
                result = .success(())
            } catch {
                result = .failure(error)
            }
            closeOutcome.withLock { $0 = result }
        }
        self.thread.withLock { $0 = thread }
    }

    private let closeOutcome = Locked<Result<Void, RuntimeError>?>(nil)

    /// Stops the loop thread, waits for it to close the loop, and joins it. Not interruptible.
    func stopThread() async throws(RuntimeError) {
        loop.stop()
        guard let thread = thread.withLock({ $0 }) else { return }
        await thread.join()
        self.thread.withLock { $0 = nil }
        try closeOutcome.withLock({ $0 })?.get()
    }
}

/// A timer scheduled on a ``UVLoop``. Holds the loop object: a registration may be cancelled after the run
/// (a cancel scope kept by a task that outlived it), when only this reference keeps the loop object valid.
struct UVTimerRegistration: BackendRegistration {
    let entry: TimerQueue.Entry
    let loop: UVLoop

    func cancel() {
        entry.markCancelled()
        let (entry, loop) = (self.entry, self.loop)
        loop.execute({ loop.removeTimer(entry) }, ifClosed: nil)
    }
}
