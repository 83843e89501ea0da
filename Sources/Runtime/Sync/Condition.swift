import Synchronization

/// A condition variable for tasks, bound to a ``Lock`` (anyio's `Condition`).
public final class Condition: Sendable {
    /// The lock that ``wait()`` releases and retakes.
    public let lock: Lock
    private let waiters = Mutex(WaitQueue<Void>())

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

    /// Releases the lock, waits for ``notify(_:)`` or ``notifyAll()``, and takes the lock again.
    ///
    /// The lock is held again when this returns *or throws*: when cancelled, it is retaken before the
    /// `CancellationError` is thrown (shielded, as in anyio).
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the lock is not held; `CancellationError`.
    public func wait() async throws {
        guard lock.isLocked else {
            throw RuntimeError(.notHeld, "Condition.wait() needs the condition's lock to be held")
        }
        try CancelScope.checkCancelled(CancelScope.current)
        let parker = Parker<Void>()
        waiters.withLock { $0.append(parker) }
        try lock.release()
        var failure: (any Error)?
        do {
            try await Runtime.park(parker) {}
        } catch {
            // Not queued any more: a notify took this waiter. If its hand-off won before the cancellation was
            // seen, pass the notification on so that it is not lost (a spurious wake-up at worst).
            if !waiters.withLock({ $0.remove(parker) }) { notify(1) }
            failure = error
        }
        await lock.acquireUninterruptibly()
        if let failure { throw failure }
    }

    /// Wakes up to `count` waiting tasks.
    public func notify(_ count: Int = 1) {
        waiters.withLock { waiters in
            for _ in 0..<max(0, count) where !waiters.resumeFirst(.success(())) { break }
        }
    }

    /// Wakes every waiting task.
    public func notifyAll() {
        waiters.withLock { $0.resumeAll(.success(())) }
    }
}
