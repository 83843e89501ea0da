#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// Sleeping, checkpoints and readiness: the waits every other primitive is made of.

extension Runtime {
    /// Yields to other tasks and throws if the calling task is cancelled (trio's `checkpoint()`).
    ///
    /// - Throws: `CancellationError` when an enclosing cancel scope, or the task, is cancelled (before or
    ///   after the yield).
    public func checkpoint() async throws {
        try CancelScope.checkCancelled(CancelScope.current)
        await Task.yield()
        try CancelScope.checkCancelled(CancelScope.current)
    }

    /// Throws `CancellationError` when the calling code is cancelled — by an enclosing cancel scope, or as a
    /// Swift task — without yielding (trio's `checkpoint_if_cancelled`, without its schedule point).
    ///
    /// Call it right before a side effect that cannot be taken back, such as sending a statement to a
    /// database: code that is cancelled already must not start it ("cancelled means it did not happen").
    public static func checkCancellation() throws(CancellationError) {
        try CancelScope.checkCancelled(CancelScope.current)
    }

    /// Suspends until the runtime's clock reaches `deadline`.
    ///
    /// A deadline already reached makes this a `checkpoint()`. It never returns early.
    ///
    /// - Throws: `CancellationError` when an enclosing cancel scope, or the task, is cancelled.
    public func sleep(until deadline: RuntimeInstant) async throws {
        if deadline <= backend.now() {
            try await checkpoint()
            return
        }
        let parker = Parker<Void>()
        var registration: (any BackendRegistration)?
        defer { registration?.cancel() }
        try await Runtime.park(parker) {
            registration = self.backend.scheduleTimer(at: deadline) { parker.resume(returning: ()) }
        }
    }

    /// Suspends for `duration` on the runtime's clock. A zero duration is a `checkpoint()`.
    ///
    /// - Throws: ``RuntimeError/Code/invalidArgument`` for a negative `duration` (trio refuses it too: it is
    ///   a bug in the caller's arithmetic, not a request to return at once); `CancellationError`.
    public func sleep(for duration: Duration) async throws {
        try CancelScope.validate(duration, "sleep(for:)", "duration")
        try await sleep(until: now.advanced(by: duration))
    }

    /// Suspends until `fd` is ready for any of `events`; returns the events that are ready.
    ///
    /// The wait is one-shot: call it again for the next readiness. Readiness may be spurious (another reader
    /// drained the data first); treat `EAGAIN` after a wake-up as "wait again".
    ///
    /// `fd` must be in non-blocking mode (`O_NONBLOCK`), on every backend: a blocking fd is refused, and no
    /// backend changes the mode for you (it belongs to the open file, which other processes may share). See
    /// the article *Doing IO from a library*.
    ///
    /// - Throws: `CancellationError` when cancelled (the registration is withdrawn and the fd can be waited
    ///   on again at once); ``RuntimeError/Code/invalidArgument`` for empty `events` or a blocking `fd`;
    ///   ``RuntimeError/Code/badDescriptor`` when `fd` is not open; ``RuntimeError/Code/busy`` when another
    ///   task waits on `fd` in one of these directions; ``RuntimeError/Code/closed`` when the fd is forgotten
    ///   meanwhile, or was closed without ``forget(fd:)`` and its number reused for another file (noticed
    ///   when the new file is waited on).
    /// - Warning: Call ``forget(fd:)`` before closing `fd` (or ``closeAfterForgetting(fd:)`` from
    ///   synchronous code).
    @discardableResult
    public func wait(fd: Int32, for events: IOEvents) async throws -> IOEvents {
        guard !events.isEmpty else {
            throw RuntimeError(.invalidArgument, "wait(fd:for:) needs .read, .write or both; got no events")
        }
        let parker = Parker<IOEvents>()
        var registration: (any BackendRegistration)?
        defer { registration?.cancel() }
        return try await Runtime.park(parker) {
            registration = try self.backend.watch(fd: fd, for: events) { result in
                parker.resume(result.mapError { $0 as any Error })
            }
        }
    }

    /// Drops the runtime's registrations of `fd` and wakes its waiters with ``RuntimeError/Code/closed``.
    ///
    /// Call it before `close(fd)`; when it returns, the fd may be closed. It is not interrupted by cancellation.
    public func forget(fd: Int32) async {
        await backend.forget(fd: fd)
    }

    /// Forgets `fd` and then closes it, from synchronous code such as a `deinit`, which cannot await
    /// ``forget(fd:)``.
    ///
    /// Returns at once; the fd is closed shortly after, once the backend has let go of it, by a task on this
    /// runtime's executor (after the run has ended, on Swift's global executor). Waiters on `fd` get
    /// ``RuntimeError/Code/closed``. Do not use `fd` after this call.
    public func closeAfterForgetting(fd: Int32) {
        closeAfterForgetting(fd: fd) { _ = close(fd) }
    }

    /// Forgets `fd` and then runs `close`, which closes it (a library that owns the fd, such as libpq's
    /// `PQfinish`), from synchronous code such as a `deinit`.
    ///
    /// Returns at once; `close` runs shortly after, once the backend has let go of `fd`, as
    /// ``closeAfterForgetting(fd:)`` says. It must not block.
    public func closeAfterForgetting(fd: Int32, close: @escaping @Sendable () -> Void) {
        let backend = self.backend
        // A task of its own, preferring the backend's executor: `forget` must be awaited, and the caller
        // cannot. It needs no cancel scope and never blocks.
        Task(executorPreference: backend.executor) {
            await backend.forget(fd: fd)
            close()
        }
    }
}

// MARK: - The same, on the current runtime

extension Runtime {
    /// `checkpoint()` on the current runtime.
    public static func checkpoint() async throws { try await current.checkpoint() }
    /// `sleep(until:)` on the current runtime.
    public static func sleep(until deadline: RuntimeInstant) async throws { try await current.sleep(until: deadline) }
    /// `sleep(for:)` on the current runtime.
    public static func sleep(for duration: Duration) async throws { try await current.sleep(for: duration) }
    /// `wait(fd:for:)` on the current runtime.
    @discardableResult
    public static func wait(fd: Int32, for events: IOEvents) async throws -> IOEvents {
        try await current.wait(fd: fd, for: events)
    }
}
