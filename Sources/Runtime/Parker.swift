public import Synchronization

/// The one object every blocked runtime wait parks on: a continuation plus an exactly-once state machine.
///
/// Readiness callbacks, timers, primitives, scope cancellation and Swift task cancellation all finish a
/// wait by calling ``resume(_:)``; the first call wins, later ones return `false` and change nothing. A
/// resume that comes before the task has suspended is kept and delivered when it suspends.
///
/// Inlinable, like the generic primitives built on it: specialized in the caller's module, it needs no look-up
/// of generic metadata per wait (a channel of `Int` would pay several per element otherwise).
@usableFromInline
final class Parker<Value: Sendable>: Sendable, CancellationWaker {
    @usableFromInline
    enum State: Sendable {
        case idle
        /// Suspended; `accounting` is the runtime whose blocked-task count includes this wait, if any. Held
        /// without a reference count: the runtime owns it and outlives every wait of its tasks (a waiting
        /// task holds its runtime through its task-local binding until the wait has returned).
        case waiting(UnsafeContinuation<Value, any Error>, Unmanaged<TaskAccounting>?)
        case resolvedEarly(Result<Value, any Error>)
        case done
    }

    @usableFromInline let state: Locked<State>
    /// Set when Swift task cancellation reached this wait while a shield hid it: a shield turned off later
    /// must still wake the wait.
    @usableFromInline let taskCancellationSeen = Atomic<Bool>(false)

    @usableFromInline
    enum Outcome { case resumeNow(UnsafeContinuation<Value, any Error>), stored, alreadyFinished }

    @inlinable init() { state = Locked(.idle) }

    /// Whether a result has been delivered (or is waiting to be collected).
    @inlinable var isResolved: Bool {
        state.withLock {
            switch $0 {
            case .idle, .waiting: false
            case .resolvedEarly, .done: true
            }
        }
    }

    /// Finishes the wait. Returns `false` when it was already finished.
    @inlinable @discardableResult
    func resume(_ result: Result<Value, any Error>) -> Bool {
        let outcome: Outcome = state.withLock { state in
            switch state {
            case .idle:
                state = .resolvedEarly(result)
                return .stored
            case .waiting(let continuation, let accounting):
                state = .done
                // Under the lock, so that the task is never counted blocked and runnable at once.
                accounting?._withUnsafeGuaranteedRef { $0.taskUnblocked() }
                return .resumeNow(continuation)
            case .resolvedEarly, .done:
                return .alreadyFinished
            }
        }
        switch outcome {
        case .resumeNow(let continuation):
            // Resumed outside the lock: the task is enqueued on its preferred executor.
            continuation.resume(with: result)
            return true
        case .stored:
            return true
        case .alreadyFinished:
            return false
        }
    }

    /// Marks the wait as given up by its waiter (it stopped waiting before a result came): later
    /// ``resume(_:)`` calls return `false`. Returns a result that was delivered before, so that the caller
    /// can still take it instead of losing it. Call only after the waiter left `wait()` or never entered it.
    @inlinable
    func abandon() -> Result<Value, any Error>? {
        state.withLock { state in
            switch state {
            case .resolvedEarly(let result):
                state = .done
                return result
            case .idle, .done:
                state = .done
                return nil
            case .waiting:
                return nil  // not possible after the waiter left
            }
        }
    }

    @inlinable @discardableResult func resume(returning value: Value) -> Bool { resume(.success(value)) }
    @inlinable @discardableResult func resume(throwing error: any Error) -> Bool { resume(.failure(error)) }

    /// Wakes the wait because an enclosing cancel scope was cancelled.
    @inlinable func wakeForCancellation() { resume(.failure(CancellationError())) }

    @inlinable func noteTaskCancellation() { taskCancellationSeen.store(true, ordering: .sequentiallyConsistent) }
    @inlinable var hasSeenTaskCancellation: Bool { taskCancellationSeen.load(ordering: .sequentiallyConsistent) }

    /// Suspends until the wait is finished. Call at most once.
    ///
    /// - Parameter accounting: the runtime whose blocked-task count this wait joins while suspended (for
    ///   `Runtime.waitAllTasksBlocked`), or `nil`.
    @inlinable
    func wait(counting accounting: TaskAccounting? = nil, isolation: isolated (any Actor)? = #isolation)
        async throws -> Value
    {
        try await withUnsafeThrowingContinuation(isolation: isolation) { continuation in
            let early: Result<Value, any Error>? = state.withLock { state in
                switch state {
                case .idle:
                    state = .waiting(continuation, accounting.map { Unmanaged.passUnretained($0) })
                    accounting?.taskBlocked()
                    return nil
                case .resolvedEarly(let result):
                    state = .done
                    return result
                case .waiting, .done:
                    // A second wait is a bug in this module, never a user's doing.
                    preconditionFailure("Parker.wait called twice")
                }
            }
            if let early {
                continuation.resume(with: early)
            } else if let accounting, accounting.hasIdleWaiters {
                accounting.wakeIdleWaitersIfAllBlocked()
            }
        }
    }
}

/// Something blocked in a cancel scope that the scope wakes when it is cancelled.
@usableFromInline
protocol CancellationWaker: AnyObject, Sendable {
    func wakeForCancellation()
    /// Records that Swift task cancellation reached the wait while a shield hid it.
    func noteTaskCancellation()
    /// Whether ``noteTaskCancellation()`` was called.
    var hasSeenTaskCancellation: Bool { get }
}
