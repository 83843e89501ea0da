// The backend contract: the only thing a backend implements. Everything else in this module (task groups,
// cancel scopes, primitives, channels, blocking work) is written once on top of it.

/// The contract an event-loop backend implements.
///
/// A backend supplies only what differs between event loops: an executor, a monotonic clock with timers,
/// file-descriptor readiness, a place to run blocking closures, and diagnostics for leak checks. It never
/// deals with continuations, cancel scopes or Swift task cancellation: ``Runtime`` wraps each callback below
/// in an exactly-once waiter that also listens to cancel scopes and task cancellation.
///
/// ## Rules every backend follows
///
/// - **Threads.** Every requirement may be called from any thread. The callbacks `fire` and `ready` may run
///   on any thread; they are short and never block. (The closures given to ``runBlocking(_:)`` may block:
///   that is their purpose.)
/// - **At most once.** A timer's `fire` and a watch's `ready` run at most once. A callback may race a
///   ``BackendRegistration/cancel()`` made on another thread and still run just after it: ``Runtime``
///   ignores such a late call. Neither is ever called synchronously from inside `scheduleTimer` or `watch`.
/// - **Never early.** A timer fires only once ``now()`` has reached its deadline.
/// - **Readiness is one-shot and per direction.** One watcher per fd and direction at a time; a second one
///   gets ``RuntimeError/Code/busy``. After `ready` has run, or after the registration is cancelled, the
///   slot is free again. A backend that registers asynchronously (when called off its executor) may report
///   `busy` or `badDescriptor` through `ready` instead of throwing; ``Runtime`` treats both alike.
/// - **Forget before close.** ``forget(fd:)`` fails the fd's watchers with ``RuntimeError/Code/closed``,
///   releases every OS registration of it, and returns only when the fd may be closed.
/// - **Executor.** Tasks of this runtime prefer ``executor`` (SE-0417), so structured children,
///   `async let`, nonisolated async functions and default actors run on it too.
/// - **After the run.** A task can outlive its run (an unstructured `Task` holding the runtime). Once the
///   backend has shut down, new timers fire at once — on another thread, through ``LateCallbacks``, never
///   inside `scheduleTimer` — new watches fail with ``RuntimeError/Code/closed`` (thrown, or through `ready`
///   on another thread), `forget` returns at once, and blocking work still runs; jobs sent to the executor
///   continue on Swift's global executor. Nothing hangs and nothing touches released resources. (Code on top
///   of the contract still never calls a backend while holding a lock its callbacks take: a cancel scope
///   arms its deadline timer outside its own lock.)
///
/// The conformance suite in `RuntimeTesting` checks all of this; a third backend passes it and needs
/// nothing else. See the "Writing a backend" article.
public protocol RuntimeBackend: AnyObject, Sendable {
    /// A short name for logs and test output, such as `"uv"` or `"dispatch"`.
    var name: String { get }

    /// The executor every task of this runtime prefers.
    var executor: any TaskExecutor { get }

    /// Whether the calling thread is currently running a job of ``executor``.
    var isOnExecutor: Bool { get }

    /// The backend's monotonic clock. Virtual-time backends return virtual time.
    func now() -> RuntimeInstant

    /// Calls `fire` once ``now()`` has reached `deadline`, unless the registration is cancelled first.
    func scheduleTimer(at deadline: RuntimeInstant, _ fire: @escaping @Sendable () -> Void) -> any BackendRegistration

    /// Calls `ready` once `fd` is ready for any of `events`, with the events that are ready, or with a
    /// ``RuntimeError`` of code ``RuntimeError/Code/closed`` when the fd is forgotten.
    ///
    /// - Throws: ``RuntimeError/Code/busy`` when another watcher holds this fd in one of these directions;
    ///   ``RuntimeError/Code/badDescriptor`` when the OS refuses the fd.
    func watch(
        fd: Int32,
        for events: IOEvents,
        _ ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void
    ) throws(RuntimeError) -> any BackendRegistration

    /// Drops every registration of `fd` and fails its watchers with ``RuntimeError/Code/closed``.
    ///
    /// Call it before `close(fd)`. It returns once the fd may be closed; it cannot be interrupted.
    func forget(fd: Int32) async

    /// Runs `work` on a thread other than the executor's. `work` may block.
    func runBlocking(_ work: @escaping @Sendable () -> Void)

    /// What the backend holds right now, for leak checks.
    func diagnostics() -> RuntimeDiagnostics
}

/// A pending timer or readiness watch. Cancelling is idempotent and safe from any thread.
public protocol BackendRegistration: Sendable {
    /// Withdraws the registration; its callback will not run after this returns on the backend's executor.
    func cancel()
}

/// The readiness a task waits for on a file descriptor.
public struct IOEvents: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// The fd is readable, or at end of file, or in error.
    public static let read = IOEvents(rawValue: 1)
    /// The fd is writable, or in error.
    public static let write = IOEvents(rawValue: 2)

    public var description: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case [.read, .write]: "read|write"
        default: "none"
        }
    }
}

/// A snapshot of what a backend holds, for leak checks (every test ends clean).
public struct RuntimeDiagnostics: Sendable, Hashable, CustomStringConvertible {
    /// Timers scheduled and not yet fired or cancelled.
    public var pendingTimers: Int
    /// File descriptors the backend still has an OS registration for.
    public var watchedDescriptors: Int
    /// Blocking closures submitted and not yet finished.
    public var blockingJobsInFlight: Int
    /// Threads the backend created that are still alive.
    public var ownedThreads: Int
    /// Whether the backend has shut down completely (libuv: `uv_loop_close` returned 0).
    public var isClosed: Bool

    public init(
        pendingTimers: Int = 0,
        watchedDescriptors: Int = 0,
        blockingJobsInFlight: Int = 0,
        ownedThreads: Int = 0,
        isClosed: Bool = false
    ) {
        self.pendingTimers = pendingTimers
        self.watchedDescriptors = watchedDescriptors
        self.blockingJobsInFlight = blockingJobsInFlight
        self.ownedThreads = ownedThreads
        self.isClosed = isClosed
    }

    public var description: String {
        "timers=\(pendingTimers) fds=\(watchedDescriptors) blocking=\(blockingJobsInFlight) "
            + "threads=\(ownedThreads) closed=\(isClosed)"
    }
}
