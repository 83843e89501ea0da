import Synchronization

/// A one-shot flag that tasks can wait for (anyio's `Event`).
///
/// Once set it stays set; every current and future ``wait()`` returns.
public final class Event: Sendable {
    private struct State: Sendable {
        var isSet = false
        var waiters: [ObjectIdentifier: Parker<Void>] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// Whether ``set()`` was called.
    public var isSet: Bool { state.withLock { $0.isSet } }

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

    /// Waits until the flag is set. Returns at once when it is, after checking for cancellation.
    ///
    /// - Throws: `CancellationError` when an enclosing cancel scope, or the task, is cancelled.
    public func wait() async throws {
        let parker = Parker<Void>()
        do {
            try await Runtime.park(parker) {
                let alreadySet = state.withLock { state in
                    if state.isSet { return true }
                    state.waiters[ObjectIdentifier(parker)] = parker
                    return false
                }
                if alreadySet { parker.resume(returning: ()) }
            }
        } catch {
            _ = state.withLock { $0.waiters.removeValue(forKey: ObjectIdentifier(parker)) }
            throw error
        }
    }
}
