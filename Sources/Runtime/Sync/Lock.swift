import Synchronization

/// A fair, non-reentrant mutual-exclusion lock for tasks (anyio's `Lock`).
///
/// Waiters get the lock in the order they asked for it: ``release()`` hands it straight to the first one.
public final class Lock: Sendable {
    private struct State: Sendable {
        var isLocked = false
        var waiters = WaitQueue<Void>()
    }
    private let state = Mutex(State())

    public init() {}

    /// Whether some task holds the lock.
    public var isLocked: Bool { state.withLock { $0.isLocked } }

    /// Waits until the lock is free and takes it.
    ///
    /// - Throws: `CancellationError` (then the lock is not held).
    public func acquire() async throws {
        try CancelScope.checkCancelled(CancelScope.current)
        if tryAcquire() { return }
        let parker = Parker<Void>()
        do {
            try await Runtime.park(parker) {
                let acquired = state.withLock { state in
                    if !state.isLocked {
                        state.isLocked = true
                        return true
                    }
                    state.waiters.append(parker)
                    return false
                }
                if acquired { parker.resume(returning: ()) }
            }
        } catch {
            // A hand-off and a cancellation cannot both win: the parker resumes once.
            _ = state.withLock { $0.waiters.remove(parker) }
            throw error
        }
    }

    /// Takes the lock if it is free; returns whether it did.
    public func tryAcquire() -> Bool {
        state.withLock { state in
            if state.isLocked { return false }
            state.isLocked = true
            return true
        }
    }

    /// Takes the lock, ignoring cancellation (for clean-up paths such as ``Condition/wait()``).
    func acquireUninterruptibly() async {
        if tryAcquire() { return }
        let parker = Parker<Void>()
        let acquired = state.withLock { state in
            if !state.isLocked {
                state.isLocked = true
                return true
            }
            state.waiters.append(parker)
            return false
        }
        if acquired { return }
        _ = try? await Runtime.parkUninterruptibly(parker)
    }

    /// Releases the lock, handing it to the first waiter if there is one.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the lock is not held.
    public func release() throws(RuntimeError) {
        try state.withLock { state throws(RuntimeError) in
            guard state.isLocked else { throw RuntimeError(.notHeld, "Lock.release() on a lock that is not held") }
            if !state.waiters.resumeFirst(.success(())) { state.isLocked = false }
        }
    }

    /// Runs `body` while holding the lock.
    public func withLock<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        try await acquire()
        defer { try? release() }
        return try await body()
    }
}
