import Synchronization

/// A counting semaphore for tasks (anyio's `Semaphore`). Waiters are served in order.
public final class Semaphore: Sendable {
    private let pool: Locked<PermitPool>
    /// The most the value may reach; `nil` for no bound.
    public let maxValue: Int?

    /// - Parameters:
    ///   - initialValue: the number of permits available at first (≥ 0).
    ///   - maxValue: when given, ``release()`` above it throws ``RuntimeError/Code/invalidArgument``.
    /// - Throws: ``RuntimeError/Code/invalidArgument`` for a negative value or one above `maxValue`.
    public init(initialValue: Int, maxValue: Int? = nil) throws(RuntimeError) {
        if let maxValue, maxValue < 0 {
            throw RuntimeError(.invalidArgument, "Semaphore maxValue must be >= 0, got \(maxValue)")
        }
        guard initialValue >= 0 else {
            throw RuntimeError(.invalidArgument, "Semaphore initialValue must be >= 0, got \(initialValue)")
        }
        if let maxValue, initialValue > maxValue {
            throw RuntimeError(.invalidArgument, "Semaphore initialValue \(initialValue) exceeds maxValue \(maxValue)")
        }
        self.pool = Locked(PermitPool(available: initialValue))
        self.maxValue = maxValue
    }

    /// The number of permits available now.
    public var value: Int { pool.withLock { $0.available } }

    /// A snapshot of the semaphore (trio's `statistics()`).
    public struct Statistics: Sendable, Hashable {
        /// The number of permits available.
        public var value: Int
        /// Tasks blocked in ``Semaphore/acquire()``.
        public var tasksWaiting: Int
    }

    /// What the semaphore holds right now.
    public func statistics() -> Statistics {
        pool.withLock { Statistics(value: $0.available, tasksWaiting: $0.waiters.count) }
    }

    /// Waits for a permit and takes it. A checkpoint, also when a permit is free; waiters are served in
    /// order, a released permit going straight to the first.
    ///
    /// - Throws: `CancellationError` (then no permit is held).
    public func acquire() async throws {
        let immediate = try await PermitPool.acquire(
            take: { parker in pool.withLock { $0.takeOrEnqueue(parker) } },
            remove: { parker in _ = pool.withLock { $0.waiters.remove(parker) } })
        if immediate { await Task.yield() }
    }

    /// Takes a permit if one is free; returns whether it did.
    public func tryAcquire() -> Bool { pool.withLock { $0.tryTake() } }

    /// Returns a permit.
    ///
    /// - Throws: ``RuntimeError/Code/invalidArgument`` when the value would exceed ``maxValue``.
    public func release() throws(RuntimeError) {
        try pool.withLock { pool throws(RuntimeError) in
            if pool.waiters.resumeFirst(.success(())) { return }  // handed to a waiter still waiting
            if let maxValue, pool.available >= maxValue {
                throw RuntimeError(.invalidArgument, "Semaphore.release() would exceed maxValue \(maxValue)")
            }
            pool.available += 1
        }
    }

    /// Runs `body` while holding a permit.
    public func withPermit<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T)
        async throws -> T
    {
        try await acquire()
        defer { try? release() }
        return try await body()
    }
}
