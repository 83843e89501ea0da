import Dispatch
import Runtime
import Synchronization

/// The Dispatch backend: a serial `DispatchQueue` as the executor, `DispatchSource` timers and read/write
/// sources (kept while in use, cancelled before the fd is closed), and a pool of threads owned by the run for
/// blocking work (libdispatch's global queues grow too slowly on Linux).
///
/// ```swift
/// try DispatchRuntime.run { try await Runtime.sleep(for: .milliseconds(10)) }       // from main
/// try await DispatchRuntime.run { … }                                              // from async code
/// ```
///
/// Its IO throughput is bounded by libdispatch's own event delivery on Linux (see the README's "Choosing a
/// backend"); its semantics are the same as every other backend's.
public enum DispatchRuntime {
    /// Tuning for one run.
    public struct Configuration: Sendable {
        /// The size of `Runtime.defaultBlockingLimiter` (default 40, as in anyio).
        public var blockingTokens = 40
        /// The label of the executor's queue.
        public var label = "anyruntime.dispatch"

        public init() {}
    }

    /// Runs `body` on a new serial queue and blocks the calling thread until it finished (anyio's `run`).
    ///
    /// - Warning: Blocks the calling thread. Do not call it from a task of another runtime.
    public static func run<T: Sendable>(
        configuration: Configuration = Configuration(),
        _ body: @escaping @Sendable () async throws -> T
    ) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let backend = DispatchBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        // The root task ends after the backend closed, so the caller returns with nothing left behind.
        let root = RootTask(runtime: runtime, { () async throws -> T in
            try await Runtime.current.enter(body, afterwards: { await backend.close() })
        }, finished: { done.signal() })
        done.wait()
        return try root.result()
    }

    /// Runs `body` on a new serial queue, from code already inside Swift concurrency.
    public static func run<T>(
        configuration: Configuration = Configuration(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        let backend = DispatchBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        return try await runtime.enter(isolation: isolation, body, afterwards: { await backend.close() })
    }
}

/// The `RuntimeBackend` over a ``DispatchLoop``.
final class DispatchBackend: RuntimeBackend {
    let loop: DispatchLoop
    private let polls: DispatchPollRegistry
    /// Threads owned by the run: libdispatch's global pool grows slowly on Linux, and 40 blocking closures
    /// that wait on one another must not queue behind each other.
    private let pool = BlockingThreadPool(maximumThreads: 64)
    private let closedFlag = Atomic<Bool>(false)

    init(configuration: DispatchRuntime.Configuration) {
        loop = DispatchLoop(label: configuration.label)
        polls = DispatchPollRegistry(ioQueue: loop.ioQueue)
    }

    var name: String { "dispatch" }
    var executor: any TaskExecutor { loop.executor }
    var isOnExecutor: Bool { loop.isOnQueue }

    func now() -> RuntimeInstant { monotonicNow() }

    func scheduleTimer(at deadline: RuntimeInstant, _ fire: @escaping @Sendable () -> Void) -> any BackendRegistration {
        let entry = TimerQueue.Entry(deadline: deadline, fire: fire)
        guard !closedFlag.load(ordering: .acquiring) else {
            // The run has ended: a task that outlived it is not left sleeping forever (fired on another
            // thread, never inside this call).
            LateCallbacks.deliver { if !entry.isCancelled { entry.fire() } }
            return DispatchTimerRegistration(entry: entry, loop: loop)
        }
        loop.insertTimer(entry)
        return DispatchTimerRegistration(entry: entry, loop: loop)
    }

    func watch(
        fd: Int32,
        for events: IOEvents,
        _ ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void
    ) throws(RuntimeError) -> any BackendRegistration {
        guard !closedFlag.load(ordering: .acquiring) else {
            throw RuntimeError(.closed, "the runtime has ended; this task outlived it")
        }
        let polls = self.polls
        let watch = ReadinessWatch(fd: fd, events: events, ready: ready) { polls.unregister($0) }
        try polls.register(watch)
        return watch
    }

    func forget(fd: Int32) async { await polls.forget(fd: fd) }

    func runBlocking(_ work: @escaping @Sendable () -> Void) { pool.submit(work) }

    func diagnostics() -> RuntimeDiagnostics {
        RuntimeDiagnostics(
            pendingTimers: loop.pendingTimers,
            watchedDescriptors: polls.watchedDescriptors,
            blockingJobsInFlight: pool.jobsInFlight,
            // libdispatch's own worker threads belong to libdispatch; the blocking pool's are ours.
            ownedThreads: pool.threadCount,
            isClosed: closedFlag.load(ordering: .acquiring))
    }

    /// Waits for blocking work (abandoned calls included) up to the pool's bound, then releases every source
    /// and the timer source and waits for their cancel handlers.
    func close() async {
        let pool = self.pool
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            // The shutdown blocks (up to its bound): on a thread of its own, not the loop's queues.
            DispatchQueue.global().async {
                pool.shutdown()
                continuation.resume()
            }
        }
        await polls.forgetAll()
        await loop.close()
        closedFlag.store(true, ordering: .releasing)
    }
}

/// A timer scheduled on a ``DispatchLoop``.
struct DispatchTimerRegistration: BackendRegistration {
    let entry: TimerQueue.Entry
    let loop: DispatchLoop

    func cancel() {
        entry.markCancelled()
        loop.removeTimer(entry)
    }
}
