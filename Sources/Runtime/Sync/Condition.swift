import Synchronization

/// A condition variable for tasks, bound to a ``Lock`` (trio's and anyio's `Condition`).
///
/// ``wait()``, ``notify(_:)`` and ``notifyAll()`` need the calling task to hold the lock; otherwise they
/// throw ``RuntimeError/Code/notHeld`` (a notify without the lock races the waiter's check of its predicate).
public final class Condition: Sendable {
    /// The lock that ``wait()`` releases and retakes.
    public let lock: Lock
    private let waiters = Locked(WaitQueue<Void>())

    /// - Parameter lock: the lock to use; a new one by default.
    public init(lock: Lock = Lock()) { self.lock = lock }

    /// Takes the condition's lock.
    public func acquire() async throws { try await lock.acquire() }
    /// Releases the condition's lock.
    public func release() throws(RuntimeError) { try lock.release() }
    /// Runs `body` while holding the condition's lock.
    public func withLock<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T)
        async throws -> T
    {
        try await lock.withLock(body)
    }

    /// A snapshot of the condition (trio's `ConditionStatistics`).
    public struct Statistics: Sendable, Hashable {
        /// Tasks blocked in ``Condition/wait()``.
        public var tasksWaiting: Int
        /// The lock's own statistics.
        public var lock: Lock.Statistics
    }

    /// What the condition holds right now.
    public func statistics() -> Statistics {
        Statistics(tasksWaiting: waiters.withLock { $0.count }, lock: lock.statistics())
    }

    /// Releases the lock, waits for ``notify(_:)`` or ``notifyAll()``, and takes the lock again.
    ///
    /// The lock is held again when this returns *or throws*: when cancelled, it is retaken before the
    /// `CancellationError` is thrown (shielded, as in trio and anyio).
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the calling task does not hold the lock; `CancellationError`.
    public func wait() async throws {
        let me = TaskIdentity.current
        try requireLock(me, "wait()")
        try CancelScope.checkCancelled(CancelScope.current)
        let parker = Parker<Void>()
        waiters.withLock { $0.append(parker) }
        try lock.release(as: me)
        var failure: (any Error)?
        do {
            try await Runtime.park(parker) {}
        } catch {
            // Not queued any more: a notify took this waiter. If its hand-off won before the cancellation was
            // seen, pass the notification on so that it is not lost (a spurious wake-up at worst).
            if !waiters.withLock({ $0.remove(parker) }) { wake(1) }
            failure = error
        }
        await lock.acquireUninterruptibly(as: me)
        if let failure { throw failure }
    }

    /// Wakes up to `count` waiting tasks.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the calling task does not hold the lock;
    ///   ``RuntimeError/Code/invalidArgument`` for a negative `count`.
    public func notify(_ count: Int = 1) throws(RuntimeError) {
        guard count >= 0 else {
            throw RuntimeError(.invalidArgument, "Condition.notify: count must be >= 0, got \(count)")
        }
        try requireLock(TaskIdentity.current, "notify()")
        wake(count)
    }

    /// Wakes every waiting task.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the calling task does not hold the lock.
    public func notifyAll() throws(RuntimeError) {
        try requireLock(TaskIdentity.current, "notifyAll()")
        waiters.withLock { $0.resumeAll(.success(())) }
    }

    private func wake(_ count: Int) {
        waiters.withLock { waiters in
            for _ in 0..<count where !waiters.resumeFirst(.success(())) { break }
        }
    }

    private func requireLock(_ task: TaskIdentity?, _ api: String) throws(RuntimeError) {
        guard lock.isHeld(by: task) else {
            throw RuntimeError(.notHeld, "Condition.\(api) needs the calling task to hold the condition's lock")
        }
    }
}
