/// An error raised by the runtime itself: misuse, a resource in the wrong state, or a backend failure.
///
/// A struct wrapping an extensible code, so codes can be added without breaking users.
/// Match on ``code``:
///
/// ```swift
/// catch let error as RuntimeError where error.code == .endOfStream { … }
/// ```
public struct RuntimeError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        public var description: String { raw }

        /// A runtime API was used outside a running runtime.
        public static let noRuntime = Code("noRuntime")
        /// Another task already waits on this fd in this direction (anyio's `BusyResourceError`).
        public static let busy = Code("busy")
        /// The fd was forgotten while a task waited on it.
        public static let closed = Code("closed")
        /// The OS refused the fd (for example `EBADF`).
        public static let badDescriptor = Code("badDescriptor")
        /// This end of a channel, or this resource, was closed by its owner (anyio's `ClosedResourceError`).
        public static let closedResource = Code("closedResource")
        /// The other side is gone: every receiver of a channel closed (anyio's `BrokenResourceError`).
        public static let brokenResource = Code("brokenResource")
        /// Every sender closed and the buffer is empty (anyio's `EndOfStream`).
        public static let endOfStream = Code("endOfStream")
        /// A nonblocking call found nothing to do (anyio's `WouldBlock`).
        public static let wouldBlock = Code("wouldBlock")
        /// A task group was used after it ended.
        public static let taskGroupClosed = Code("taskGroupClosed")
        /// A task started with `start` ended without calling `started(_:)`.
        public static let taskNotStarted = Code("taskNotStarted")
        /// `release()` on a lock, semaphore or limiter that the caller does not hold, or a condition used by
        /// a task that does not hold its lock.
        public static let notHeld = Code("notHeld")
        /// `acquire()` on a lock the calling task holds already, or a second token of a ``CapacityLimiter``
        /// for the same borrower (trio raises `RuntimeError`; waiting would deadlock).
        public static let alreadyHeld = Code("alreadyHeld")
        /// A ``CancelScope`` entered a second time (a scope is entered once).
        public static let alreadyEntered = Code("alreadyEntered")
        /// ``Runtime/TaskStatus/started(_:)`` called a second time.
        public static let alreadyStarted = Code("alreadyStarted")
        /// An argument was out of range.
        public static let invalidArgument = Code("invalidArgument")
        /// The backend failed (for example a libuv call returned an error).
        public static let backendFailure = Code("backendFailure")
    }

    /// What went wrong.
    public let code: Code
    /// A sentence saying what happened and, where there is one, what to do.
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "RuntimeError.\(code): \(message)" }

    static func noRuntime(_ api: String) -> RuntimeError {
        RuntimeError(
            .noRuntime,
            "\(api) needs a running runtime, and none is active in this task. Run the code inside "
                + "UVRuntime.run { … }, DispatchRuntime.run { … } or try Backend.fromEnvironment().run { … } "
                + "(module AnyRuntime), or pass a Runtime explicitly.")
    }
}

/// Thrown by `failAfter(_:shield:_:)` and `fail(at:shield:_:)` when the deadline expired (anyio's `TimeoutError`).
public struct TimeoutError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The deadline that expired.
    public let deadline: RuntimeInstant
    public init(deadline: RuntimeInstant) { self.deadline = deadline }
    public var description: String { "TimeoutError: the deadline \(deadline) expired" }
}

/// Several tasks of one task group failed (anyio's `ExceptionGroup`).
///
/// A task group that ends with exactly one failure throws that error itself; this type carries two or more,
/// in the order they happened.
public struct ErrorGroup: Error, Sendable, CustomStringConvertible {
    /// Every failure, in the order the group saw them.
    public let errors: [any Error]
    public init(errors: [any Error]) { self.errors = errors }
    public var description: String {
        "ErrorGroup(\(errors.count) errors): " + errors.map { String(describing: $0) }.joined(separator: "; ")
    }
}
