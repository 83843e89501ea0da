import Synchronization

/// A one-shot flag that tasks can wait for (anyio's `Event`).
///
/// Once set it stays set; every current and future ``wait()`` returns.
public final class Event: Sendable {
    private struct State: Sendable {
        var isSet = false
        var waiters: [ObjectIdentifier: Parker<Void>] = [:]
    }
    private let state = Locked(State())

    public init() {}

    /// Whether ``set()`` was called.
    public var isSet: Bool { state.withLock { $0.isSet } }

    /// A snapshot of the event (trio's `EventStatistics`).
    public struct Statistics: Sendable, Hashable {
        /// Tasks blocked in ``Event/wait()``.
        public var tasksWaiting: Int
    }

    /// What the event holds right now.
    public func statistics() -> Statistics { Statistics(tasksWaiting: state.withLock { $0.waiters.count }) }

    /// Sets the flag and wakes every waiter. Idempotent; safe from any thread.
    public func set() {
        let waiters = state.withLock { state -> [Parker<Void>] in
            if state.isSet { return [] }
            state.isSet = true
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: ()) }
    }

    /// Waits until the flag is set. A checkpoint: when it is set already, checks for cancellation and lets
    /// other tasks run before returning.
    ///
    /// - Throws: `CancellationError` when an enclosing cancel scope, or the task, is cancelled.
    public func wait() async throws {
        let parker = Parker<Void>()
        var parked = true
        do {
            try await Runtime.park(parker) {
                let alreadySet = state.withLock { state in
                    if state.isSet { return true }
                    state.waiters[ObjectIdentifier(parker)] = parker
                    return false
                }
                if alreadySet {
                    parked = false
                    parker.resume(returning: ())
                }
            }
            if !parked { await Task.yield() }
        } catch {
            _ = state.withLock { $0.waiters.removeValue(forKey: ObjectIdentifier(parker)) }
            throw error
        }
    }
}
