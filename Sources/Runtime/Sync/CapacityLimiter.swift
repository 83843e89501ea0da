import Synchronization

/// Bounds how many tasks use a resource at once (anyio's `CapacityLimiter`).
///
/// Unlike a ``Semaphore`` its size can change while in use. Every ``Runtime`` has a default one of 40 tokens
/// bounding `Runtime.runBlocking(limiter:onCancel:_:)`.
///
/// Difference from anyio: tokens are not tied to the borrowing task, so one task may hold several.
public final class CapacityLimiter: Sendable {
    private struct State: Sendable {
        var pool: PermitPool
        var total: Int
    }
    private let state: Mutex<State>

    /// - Parameter totalTokens: how many holders at once (≥ 1; smaller values are raised to 1).
    public init(totalTokens: Int) {
        let total = max(1, totalTokens)
        state = Mutex(State(pool: PermitPool(available: total), total: total))
    }

    /// The number of tokens; raising it wakes waiters, lowering it takes effect as tokens come back.
    ///
    /// Values below 1 are raised to 1.
    public var totalTokens: Int {
        get { state.withLock { $0.total } }
        set {
            let newTotal = max(1, newValue)
            state.withLock { state in
                var delta = newTotal - state.total
                state.total = newTotal
                if delta <= 0 {
                    state.pool.available += delta  // may go negative: returned tokens pay the debt first
                    return
                }
                // New tokens pay any debt first, then go to waiters one each, then to the free count.
                let debt = min(delta, max(0, -state.pool.available))
                state.pool.available += debt
                delta -= debt
                while delta > 0, state.pool.waiters.resumeFirst(.success(())) { delta -= 1 }
                state.pool.available += delta
            }
        }
    }

    /// Tokens currently held.
    public var borrowedTokens: Int { state.withLock { $0.total - $0.pool.available } }

    /// Tokens free right now.
    public var availableTokens: Int { state.withLock { max(0, $0.pool.available) } }

    /// Waits for a token and takes it.
    ///
    /// - Throws: `CancellationError` (then no token is held).
    public func acquire() async throws {
        try await PermitPool.acquire(
            take: { parker in state.withLock { $0.pool.takeOrEnqueue(parker) } },
            remove: { parker in _ = state.withLock { $0.pool.waiters.remove(parker) } })
    }

    /// Takes a token if one is free; returns whether it did.
    public func tryAcquire() -> Bool { state.withLock { $0.pool.tryTake() } }

    /// Returns a token.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when no token is borrowed.
    public func release() throws(RuntimeError) {
        try state.withLock { state throws(RuntimeError) in
            guard state.pool.available < state.total else {
                throw RuntimeError(.notHeld, "CapacityLimiter.release() with no token borrowed")
            }
            if state.pool.available < 0 {
                state.pool.available += 1
            } else {
                state.pool.give()
            }
        }
    }

    /// Runs `body` while holding a token.
    public func withToken<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T)
        async throws -> T
    {
        try await acquire()
        defer { try? release() }
        return try await body()
    }
}
