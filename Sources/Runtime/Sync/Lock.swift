import DequeModule
import Synchronization

/// A fair, non-reentrant mutual-exclusion lock for tasks, with an owner (trio's and anyio's `Lock`).
///
/// - **Owned.** The task that acquired the lock owns it. Acquiring a lock the calling task holds, or
///   releasing one it does not, throws ``RuntimeError/Code/alreadyHeld`` / ``RuntimeError/Code/notHeld``
///   instead of deadlocking or freeing another task's lock.
/// - **Strictly fair.** Waiters get the lock in the order they asked for it: ``release()`` hands it straight
///   to the first one, so a task that releases and acquires again goes behind every waiter.
/// - **A checkpoint.** ``acquire()`` always checks for cancellation and lets other tasks run, also when the
///   lock is free (trio's rule: every blocking-capable call is a checkpoint).
public final class Lock: Sendable {
    private struct Waiter: Sendable {
        let parker: Parker<Void>
        let task: TaskIdentity?
    }
    private struct State: Sendable {
        var owner: TaskIdentity?
        var isLocked = false
        var waiters = Deque<Waiter>()
    }
    private let state = Locked(State())

    public init() {}

    /// Whether some task holds the lock.
    public var isLocked: Bool { state.withLock { $0.isLocked } }

    /// A snapshot of the lock (trio's `LockStatistics`).
    public struct Statistics: Sendable, Hashable {
        /// Whether some task holds the lock.
        public var isLocked: Bool
        /// The task holding the lock.
        public var owner: TaskIdentity?
        /// Tasks blocked in ``Lock/acquire()``.
        public var tasksWaiting: Int
    }

    /// What the lock holds right now.
    public func statistics() -> Statistics {
        state.withLock { Statistics(isLocked: $0.isLocked, owner: $0.owner, tasksWaiting: $0.waiters.count) }
    }

    /// Waits until the lock is free and takes it. A checkpoint, also when the lock is free.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when the calling task holds the lock; `CancellationError`
    ///   (then the lock is not held).
    public func acquire() async throws {
        let me = TaskIdentity.current
        try CancelScope.checkCancelled(CancelScope.current)
        if try tryAcquire(as: me) {
            // A schedule point that does not throw (trio's cancel-shielded checkpoint): the lock is held now,
            // and a cancellation here would have to give it back.
            await Task.yield()
            return
        }
        let parker = Parker<Void>()
        do {
            try await Runtime.park(parker) {
                let acquired = try state.withLock { state throws(RuntimeError) in
                    if try Self.take(&state, as: me) { return true }
                    state.waiters.append(Waiter(parker: parker, task: me))
                    return false
                }
                if acquired { parker.resume(returning: ()) }
            }
        } catch {
            // A hand-off and a cancellation cannot both win: the parker resumes once.
            state.withLock { state in
                if let index = state.waiters.firstIndex(where: { $0.parker === parker }) {
                    state.waiters.remove(at: index)
                }
            }
            throw error
        }
    }

    /// Takes the lock if it is free; returns whether it did.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when the calling task holds the lock.
    public func tryAcquire() throws(RuntimeError) -> Bool { try tryAcquire(as: TaskIdentity.current) }

    private func tryAcquire(as task: TaskIdentity?) throws(RuntimeError) -> Bool {
        try state.withLock { state throws(RuntimeError) in try Self.take(&state, as: task) }
    }

    private static func take(_ state: inout State, as task: TaskIdentity?) throws(RuntimeError) -> Bool {
        if state.isLocked {
            if let task, state.owner == task {
                throw RuntimeError(.alreadyHeld, "Lock.acquire() by the task that holds the lock (it would deadlock)")
            }
            return false
        }
        // Free means nobody waits: release hands the lock to the first waiter under this same lock.
        state.isLocked = true
        state.owner = task
        return true
    }

    /// Takes the lock, ignoring cancellation (for clean-up paths such as ``Condition/wait()``).
    func acquireUninterruptibly(as task: TaskIdentity?) async {
        let parker = Parker<Void>()
        let acquired = state.withLock { state in
            if !state.isLocked {
                state.isLocked = true
                state.owner = task
                return true
            }
            state.waiters.append(Waiter(parker: parker, task: task))
            return false
        }
        if acquired { return }
        _ = try? await Runtime.parkUninterruptibly(parker)
    }

    /// Releases the lock, handing it to the first waiter if there is one.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the calling task does not hold the lock.
    public func release() throws(RuntimeError) {
        try release(as: TaskIdentity.current)
    }

    func release(as task: TaskIdentity?) throws(RuntimeError) {
        try state.withLock { state throws(RuntimeError) in
            guard state.isLocked, state.owner == task else {
                throw RuntimeError(
                    .notHeld,
                    state.isLocked
                        ? "Lock.release() by a task that does not hold the lock" : "Lock.release() on a lock that is not held")
            }
            while let waiter = state.waiters.popFirst() {
                if waiter.parker.resume(.success(())) {
                    state.owner = waiter.task  // handed off: the waiter owns it before it runs
                    return
                }
            }
            state.isLocked = false
            state.owner = nil
        }
    }

    /// Whether `task` holds the lock.
    func isHeld(by task: TaskIdentity?) -> Bool { state.withLock { $0.isLocked && $0.owner == task } }

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
