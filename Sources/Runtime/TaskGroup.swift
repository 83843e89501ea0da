import Synchronization

extension Runtime {
    /// Runs `body` with a new task group and returns when the body and every task started in the group have
    /// finished (anyio's `create_task_group()`).
    ///
    /// ```swift
    /// try await Runtime.withTaskGroup { group in
    ///     try group.startSoon { try await serve(connection) }
    ///     let port = try await group.start { (status: Runtime.TaskStatus<Int>) in
    ///         let listener = try bind()
    ///         try status.started(listener.port)      // `start` returns now; the task keeps running
    ///         try await listener.accept(into: group)
    ///     }
    /// }
    /// ```
    ///
    /// - The body and its tasks are one unit: the body runs inside the group's ``TaskGroup/cancelScope``, and
    ///   tasks started in the group run in it too, so cancelling the group (or an enclosing scope) reaches all.
    /// - The first failure, of the body or of a task, cancels the rest. When the group ends, one failure is
    ///   rethrown as it is, two or more as an ``ErrorGroup``; the `CancellationError`s of tasks cancelled
    ///   because of it are dropped.
    /// - The group waits for every task before it returns, also when it is cancelled: no task outlives it.
    ///
    /// Named `Runtime.withTaskGroup` / `Runtime.TaskGroup` so that it does not clash with Swift's `TaskGroup`.
    /// Unlike Swift's group, the handle is `Sendable`: tasks may start more tasks in the same group.
    ///
    /// - Throws: the failure of the body or a task, an ``ErrorGroup``, or `CancellationError` when an
    ///   enclosing scope was cancelled.
    public func withTaskGroup(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (TaskGroup) async throws -> Void
    ) async throws {
        // Failures leave the group outside its own scope: the scope, cancelled by the first failure, must not
        // take the group's errors for its own cancellation.
        var failure: (any Error)?
        _ = try await CancelScope.run(runtime: self, deadline: .never, shield: false, isolation: isolation) {
            scope in
            let group = TaskGroup(runtime: self, scope: scope)
            do {
                try await body(group)
            } catch {
                group.bodyFailed(error)
            }
            await group.join()
            failure = try group.finish()
        }
        if let failure { throw failure }
    }

    /// `withTaskGroup(isolation:_:)` on the current runtime.
    public static func withTaskGroup(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (TaskGroup) async throws -> Void
    ) async throws {
        try await current.withTaskGroup(isolation: isolation, body)
    }

    /// A handle to a running task group, for starting tasks in it and cancelling it.
    ///
    /// Obtained from `Runtime.withTaskGroup(isolation:_:)`. It may be passed to the group's own tasks.
    public final class TaskGroup: Sendable {
        /// The runtime the group's tasks run on.
        public let runtime: Runtime
        /// The scope the body and every task of the group run in; cancelling it cancels the group.
        public let cancelScope: CancelScope

        private struct State: Sendable {
            var nextID = 0
            var tasks: [Int: Task<Void, Never>] = [:]
            var pending = 0
            var errors: [any Error] = []
            var cancelRequested = false
            var bodyCancelled = false
            var joinCancelled = false
            var joiner: Parker<Void>?
            var closed = false
        }
        private let state = Locked(State())

        init(runtime: Runtime, scope: CancelScope) {
            self.runtime = runtime
            self.cancelScope = scope
        }

        /// Starts `work` as a new task in the group and returns at once (anyio's `start_soon`).
        ///
        /// The task runs on the runtime's executor, inside the group's cancel scope.
        ///
        /// - Throws: ``RuntimeError/Code/taskGroupClosed`` when the group has already ended.
        public func startSoon(_ work: @escaping @Sendable () async throws -> Void) throws(RuntimeError) {
            try spawn(in: cancelScope, work)
        }

        /// Starts `work` as a new task and waits until it calls ``TaskStatus/started(_:)``; returns the value it
        /// passed, while the task keeps running in the group (anyio's `start` with `task_status.started()`).
        ///
        /// Until it signals, the task belongs to this call: if it fails first, this call throws its error (the
        /// group does not see it). If this call is cancelled first — also when it is called in a scope that is
        /// cancelled already — the task still starts and runs until its first checkpoint, where the
        /// cancellation reaches it; this call waits for it to signal or end, as trio's `start` does, and
        /// throws what it ended with (`CancellationError`, unless it caught it and signalled).
        ///
        /// - Throws: the task's error before it signalled; ``RuntimeError/Code/taskNotStarted`` when it returned
        ///   without signalling; `CancellationError`; ``RuntimeError/Code/taskGroupClosed``.
        public func start<Value: Sendable>(
            isolation: isolated (any Actor)? = #isolation,
            _ work: @escaping @Sendable (TaskStatus<Value>) async throws -> Void
        ) async throws -> Value {
            let status = TaskStatus<Value>()
            let taskScope = CancelScope(runtime: runtime, parent: cancelScope, deadline: .never, shield: false)
            try spawn(in: taskScope) {
                do {
                    try await work(status)
                } catch {
                    if status.deliverFailureIfNotStarted(error) { return }
                    throw error
                }
                _ = status.deliverFailureIfNotStarted(
                    RuntimeError(.taskNotStarted, "a task started with start() returned without calling started()"))
            }
            // A cancellation of the caller reaches the task through its scope; the task's own outcome is then
            // what this call reports, so nothing it did before it signalled goes unreported.
            return try await Runtime.parkCallingOnCancel(status.parker) { taskScope.cancel() }
        }

        /// What the group holds right now (trio's `child_tasks`).
        public func statistics() -> Statistics {
            Statistics(tasksRunning: state.withLock { $0.pending })
        }

        /// A snapshot of a group, from ``statistics()``.
        public struct Statistics: Sendable, Hashable {
            /// Tasks started in the group that have not finished.
            public var tasksRunning: Int
        }

        /// Cancels the group: its scope, so every runtime wait of the body and the tasks throws, and the tasks
        /// themselves the Swift way, so that awaits the runtime does not own are interrupted too.
        public func cancel() {
            cancelScope.cancel()
            cancelTasks()
        }

        // MARK: Internals

        private func spawn(
            in scope: CancelScope,
            _ work: @escaping @Sendable () async throws -> Void
        ) throws(RuntimeError) {
            let runtime = self.runtime
            let cancelNow = try state.withLock { state throws(RuntimeError) -> Bool in
                guard !state.closed else {
                    throw RuntimeError(.taskGroupClosed, "startSoon/start called on a task group that has ended")
                }
                state.nextID += 1
                state.pending += 1
                let id = state.nextID
                runtime.liveTaskCount.add(1, ordering: .relaxed)
                runtime.accounting.taskStarted()
                // Created under the lock so that the handle is stored before the task can finish; a Task's
                // body never runs synchronously inside its initializer.
                state.tasks[id] = Task(executorPreference: runtime.backend.executor) {
                    await Runtime.$taskLocal.withValue(runtime) {
                        await CancelScope.$current.withValue(scope) {
                            do {
                                try await work()
                                self.taskFinished(id, scope: scope, error: nil)
                            } catch {
                                self.taskFinished(id, scope: scope, error: error)
                            }
                        }
                    }
                }
                return state.cancelRequested
            }
            if cancelNow { cancelTasks() }
        }

        private func taskFinished(_ id: Int, scope: CancelScope, error: (any Error)?) {
            // A task that was cancelled because its scope was is not a failure of its own.
            let expectedCancellation = error is CancellationError && scope.isEffectivelyCancelled()
            let (firstFailure, joiner) = state.withLock { state -> (Bool, Parker<Void>?) in
                state.tasks[id] = nil
                state.pending -= 1
                var firstFailure = false
                if let error, !expectedCancellation {
                    state.errors.append(error)
                    firstFailure = !state.cancelRequested
                }
                var joiner: Parker<Void>?
                if state.pending == 0, let waiting = state.joiner {
                    // The body is waiting in join: the group ends now, so it refuses new tasks from here on.
                    joiner = waiting
                    state.joiner = nil
                    state.closed = true
                }
                return (firstFailure, joiner)
            }
            runtime.liveTaskCount.subtract(1, ordering: .relaxed)
            if firstFailure { cancel() }
            joiner?.resume(returning: ())
            runtime.accounting.taskFinished()
        }

        fileprivate func bodyFailed(_ error: any Error) {
            let firstFailure = state.withLock { state -> Bool in
                if error is CancellationError { state.bodyCancelled = true } else { state.errors.append(error) }
                return !state.cancelRequested
            }
            // As in trio, any exception leaving the body, cancellation included, cancels the children.
            if firstFailure { cancel() }
        }

        private func cancelTasks() {
            let tasks = state.withLock { state in
                state.cancelRequested = true
                return Array(state.tasks.values)
            }
            for task in tasks { task.cancel() }
        }

        /// Waits until every task finished. When cancelled meanwhile, cancels the tasks and keeps waiting.
        ///
        /// Leaving a group always gives other tasks a turn, also when it had no task (trio's schedule point);
        /// like trio's and anyio's, an empty group's exit does not raise a pending cancellation itself.
        fileprivate func join() async {
            let parker = Parker<Void>()
            guard registerJoiner(parker) else {
                await Task.yield()
                return
            }
            do {
                try await Runtime.park(parker) {}
            } catch {
                state.withLock { $0.joinCancelled = true }
                cancelTasks()
                let last = Parker<Void>()
                guard registerJoiner(last) else { return }
                // The tasks are cancelled and will end; their group must not end before them.
                _ = try? await Runtime.parkUninterruptibly(last)
            }
        }

        private func registerJoiner(_ parker: Parker<Void>) -> Bool {
            state.withLock { state in
                if state.pending == 0 {
                    state.closed = true
                    return false
                }
                state.joiner = parker
                return true
            }
        }

        /// Closes the group; returns the failure to rethrow, or throws `CancellationError` for the group's scope
        /// to catch or pass on.
        fileprivate func finish() throws(CancellationError) -> (any Error)? {
            let (errors, cancelled) = state.withLock { state in
                state.closed = true
                return (state.errors, state.bodyCancelled || state.joinCancelled)
            }
            // A recorded CancellationError (one no scope explains) stays a failure, inside an ErrorGroup.
            if errors.count == 1, !(errors[0] is CancellationError) { return errors[0] }
            if !errors.isEmpty { return ErrorGroup(errors: errors) }
            if cancelled { throw CancellationError() }
            return nil
        }
    }

    /// How a task started with ``TaskGroup/start(isolation:_:)`` reports that it is ready.
    public final class TaskStatus<Value: Sendable>: Sendable {
        let parker = Parker<Value>()
        /// 0: not started; 1: `started` was called; 2: the task ended before it, its outcome delivered.
        private let phase = Atomic<UInt8>(0)

        init() {}

        /// Whether ``started(_:)`` was called.
        public var hasStarted: Bool { phase.load(ordering: .acquiring) == 1 }

        /// Signals that the task is ready; `start` returns `value`.
        ///
        /// - Throws: ``RuntimeError/Code/alreadyStarted`` when called a second time (trio raises too: a
        ///   second value would be lost).
        public func started(_ value: Value) throws(RuntimeError) {
            guard phase.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged else {
                throw RuntimeError(.alreadyStarted, "started() was called twice on the same task status")
            }
            parker.resume(returning: value)
        }

        /// Delivers `error` to the `start` caller when the task has not signalled; returns whether it did.
        fileprivate func deliverFailureIfNotStarted(_ error: any Error) -> Bool {
            guard phase.compareExchange(expected: 0, desired: 2, ordering: .acquiringAndReleasing).exchanged else {
                return false
            }
            return parker.resume(throwing: error)
        }
    }
}

extension Runtime.TaskStatus where Value == Void {
    /// Signals that the task is ready.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyStarted`` when called a second time.
    public func started() throws(RuntimeError) { try started(()) }
}

// MARK: - Interrupting awaits the runtime does not own

extension Runtime {
    /// Runs `body` so that the cancellation of an enclosing cancel scope interrupts it even where it awaits
    /// something the runtime does not own (`Task.sleep`, an `AsyncStream`, another library's continuation).
    ///
    /// Cancel scopes reach runtime waits only. This runs `body` as a task of a new task group; when an
    /// enclosing scope is cancelled (or its deadline passes), the group cancels that task the Swift way, so
    /// any await that honours Swift task cancellation ends too. It costs one task.
    ///
    /// ```swift
    /// let reply = try await moveOnAfter(.seconds(2)) { _ in
    ///     try await Runtime.interruptible { try await someLibrary.request() }   // not a runtime wait
    /// }
    /// ```
    ///
    /// - Throws: what `body` throws; `CancellationError` when it was interrupted.
    public func interruptible<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let result = Locked<T?>(nil)
        try await withTaskGroup(isolation: isolation) { group in
            try group.startSoon {
                let value = try await body()
                result.withLock { $0 = value }
            }
        }
        // The group ended without an error, so its only task returned a value.
        guard let value = result.withLock({ $0 }) else { throw CancellationError() }
        return value
    }

    /// `interruptible(isolation:_:)` on the current runtime.
    public static func interruptible<T: Sendable>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await current.interruptible(isolation: isolation, body)
    }
}
