import Synchronization

/// A running runtime: a backend plus the state built on it, found by library code through ``current``.
///
/// Library code never names a backend. It reaches the runtime the application picked through
/// ``current`` (as anyio finds its backend through sniffio), or takes one explicitly:
///
/// ```swift
/// try await Runtime.sleep(for: .milliseconds(10))          // the current runtime
/// let runtime = try Runtime.current                          // or keep it
/// try await runtime.wait(fd: socket, for: .read)
/// ```
///
/// Backends create one per run and enter it with ``enter(isolation:_:)``.
public final class Runtime: Sendable {
    @TaskLocal @usableFromInline static var taskLocal: Runtime?

    /// The runtime of the calling task.
    ///
    /// - Throws: ``RuntimeError/Code/noRuntime`` outside a running runtime, with a message naming the fix.
    public static var current: Runtime {
        get throws(RuntimeError) {
            guard let runtime = taskLocal else { throw .noRuntime("Runtime.current") }
            return runtime
        }
    }

    /// The runtime of the calling task, or `nil` outside one.
    public static var currentIfAny: Runtime? { taskLocal }

    /// The backend this runtime runs on.
    public let backend: any RuntimeBackend

    /// The limiter that bounds `runBlocking(limiter:onCancel:_:)` when no other is given: 40 tokens, as in anyio.
    public let defaultBlockingLimiter: CapacityLimiter

    /// Tasks started by this runtime's task groups that have not finished yet.
    let liveTaskCount = Atomic<Int>(0)

    /// Every task of the runtime and how many are blocked, for ``waitAllTasksBlocked(cushion:isolation:)``.
    @usableFromInline let accounting = TaskAccounting()

    /// The run's system tasks (``startSystemTask(_:)``).
    let systemTasks = Locked(SystemTasks())

    /// Wraps `backend`. Backends call this from their entry point, once per run.
    ///
    /// - Parameters:
    ///   - backend: the backend of this run.
    ///   - blockingTokens: the size of ``defaultBlockingLimiter`` (≥ 1).
    /// - Throws: ``RuntimeError/Code/invalidArgument`` when `blockingTokens` is below 1.
    public init(backend: any RuntimeBackend, blockingTokens: Int = 40) throws(RuntimeError) {
        guard blockingTokens >= 1 else {
            throw RuntimeError(.invalidArgument, "blockingTokens must be >= 1, got \(blockingTokens)")
        }
        self.backend = backend
        self.defaultBlockingLimiter = try CapacityLimiter(totalTokens: blockingTokens)
    }

    /// The backend's name, such as `"uv"` or `"dispatch"`.
    public var name: String { backend.name }

    /// The runtime's clock reading.
    public var now: RuntimeInstant { backend.now() }

    /// The runtime's clock as a Swift `Clock`.
    public var clock: RuntimeClock { RuntimeClock(self) }

    /// Tasks started by this runtime's task groups and still running; 0 after a clean run.
    public var liveTasks: Int { liveTaskCount.load(ordering: .relaxed) }

    /// Runs `body` on this runtime: the task prefers the backend's executor and sees `self` as ``current``.
    ///
    /// Backends call this from their `run` entry points; it is also how code already inside Swift
    /// concurrency joins a runtime it holds.
    public func enter<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async rethrows -> T {
        accounting.taskStarted()
        defer { accounting.taskFinished() }
        return try await withTaskExecutorPreference(backend.executor, isolation: isolation) {
            try await Runtime.$taskLocal.withValue(self, operation: body)
        }
    }
}

// MARK: - Waiting

extension Runtime {
    /// Suspends on `parker` after `arm` registered it somewhere that will resume it, taking part in the
    /// enclosing cancel scopes and in Swift task cancellation.
    ///
    /// Cancellation is checked before `arm` runs (level-triggered: a cancelled scope fails every wait). While
    /// suspended, a cancelled scope or task resumes the parker with `CancellationError` unless a shield sits
    /// between the wait and the cancellation. The caller withdraws whatever `arm` registered when this throws.
    @inlinable
    static func park<Value>(
        _ parker: Parker<Value>,
        isolation: isolated (any Actor)? = #isolation,
        arm: () throws -> Void
    ) async throws -> Value {
        let scope = CancelScope.current
        try CancelScope.checkCancelled(scope)
        try arm()
        // Resolved while arming (a set event, a free permit, a ready element): nothing to wait for, so no
        // scope registration and no deadline timer.
        if parker.isResolved { return try await parker.wait() }
        guard let scope else {
            let accounting = taskLocal?.accounting
            return try await withTaskCancellationHandler(
                operation: { try await parker.wait(counting: accounting) },
                onCancel: { parker.wakeForCancellation() },
                isolation: isolation)
        }
        scope.registerWaker(parker)
        defer { scope.unregisterWaker(parker) }
        let accounting = scope.accounting
        return try await withTaskCancellationHandler(
            operation: { try await parker.wait(counting: accounting) },
            onCancel: {
                // Swift task cancellation is sticky; inside a shield runtime waits ignore it, and the first
                // checkpoint after the shield sees it. Noted first, so that a shield turned off later wakes
                // this wait (CancelScope.shield's setter checks the note after clearing the flag).
                parker.noteTaskCancellation()
                if !scope.isShieldedChain { parker.wakeForCancellation() }
            },
            isolation: isolation)
    }

    /// Suspends until `parker` resumes, ignoring every cancellation. For clean-up that must finish.
    @inlinable
    static func parkUninterruptibly<Value>(
        _ parker: Parker<Value>,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> Value {
        try await parker.wait(counting: (CancelScope.current?.accounting) ?? taskLocal?.accounting)
    }

    /// Suspends until `parker` resumes; when cancellation arrives meanwhile, calls `onCancel` once and keeps
    /// waiting (unless `onCancel` resumes the parker itself). Used where the waited-for work can be
    /// interrupted or withdrawn but must still be collected.
    @inlinable
    static func parkCallingOnCancel<Value>(
        _ parker: Parker<Value>,
        isolation: isolated (any Actor)? = #isolation,
        _ onCancel: @escaping @Sendable () -> Void
    ) async throws -> Value {
        let waker = CallbackWaker(onCancel)
        let scope = CancelScope.current
        scope?.registerWaker(waker)
        defer { scope?.unregisterWaker(waker) }
        let accounting = scope?.accounting ?? taskLocal?.accounting
        return try await withTaskCancellationHandler(
            operation: { try await parker.wait(counting: accounting) },
            onCancel: {
                waker.noteTaskCancellation()
                if scope?.isShieldedChain != true { waker.wakeForCancellation() }
            },
            isolation: isolation)
    }
}

/// A waker that runs a closure once.
@usableFromInline
final class CallbackWaker: CancellationWaker {
    private let action: Locked<(@Sendable () -> Void)?>
    private let taskCancellationSeen = Atomic<Bool>(false)
    @usableFromInline init(_ action: @escaping @Sendable () -> Void) { self.action = Locked(action) }
    @usableFromInline func noteTaskCancellation() { taskCancellationSeen.store(true, ordering: .sequentiallyConsistent) }
    @usableFromInline var hasSeenTaskCancellation: Bool { taskCancellationSeen.load(ordering: .sequentiallyConsistent) }
    @usableFromInline func wakeForCancellation() {
        let action = self.action.withLock { action -> (@Sendable () -> Void)? in
            defer { action = nil }
            return action
        }
        action?()
    }
}
