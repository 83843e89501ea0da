import Synchronization

/// The system tasks of one run: started by library code for work that must outlive its caller, cancelled and
/// awaited when the run's body has ended.
struct SystemTasks: Sendable {
    var running: [Int: (scope: CancelScope, task: Task<Void, Never>)] = [:]
    var nextID = 0
    /// The run's body has ended: new system tasks do not start, running ones are cancelled.
    var closing = false
    /// Shutdowns waiting for the last one to end.
    var waiters: [Parker<Void>] = []
}

extension Runtime {
    /// Starts `work` as a system task of this run (trio's `spawn_system_task`): it belongs to the run, not
    /// to the task that starts it, so it can finish clean-up after its caller has returned — a cancel request
    /// to a database server that has stopped answering, say, which must not hold the caller past its deadline.
    ///
    /// `work` runs on the runtime's executor with this runtime as ``current``, in a cancel scope of its own
    /// outside every caller's: no caller's cancellation or deadline reaches it, so give it a deadline of its
    /// own. When the run's body has ended, every system task still running is cancelled (its scope and its
    /// Swift task) and the run waits for it, up to 1 s, before the backend shuts down; a system task must
    /// therefore end promptly once cancelled (every runtime wait does).
    ///
    /// - Returns: whether `work` was started; `false` once the run's body has ended.
    @discardableResult
    public func startSystemTask(_ work: @escaping @Sendable () async -> Void) -> Bool {
        systemTasks.withLock { tasks -> Bool in
            guard !tasks.closing else { return false }
            tasks.nextID += 1
            let id = tasks.nextID
            let scope = CancelScope(runtime: self, parent: nil, deadline: .never, shield: false)
            accounting.taskStarted()
            // Registered with its task under the lock (a Task's body never runs inside its initializer), so a
            // shutdown that comes before the task first runs still finds, cancels and awaits it.
            tasks.running[id] = (scope, Task(executorPreference: backend.executor) {
                await Runtime.$taskLocal.withValue(self) {
                    await CancelScope.$current.withValue(scope) { await work() }
                }
                self.systemTaskEnded(id)
            })
            return true
        }
    }

    /// System tasks still running.
    public var systemTaskCount: Int { systemTasks.withLock { $0.running.count } }

    private func systemTaskEnded(_ id: Int) {
        let waiters = systemTasks.withLock { tasks -> [Parker<Void>] in
            tasks.running[id] = nil
            guard tasks.running.isEmpty else { return [] }
            defer { tasks.waiters = [] }
            return tasks.waiters
        }
        accounting.taskFinished()
        for waiter in waiters { waiter.resume(returning: ()) }
    }

    /// Cancels every system task and waits, up to `bound`, until each has ended; later ones do not start.
    /// Called once the run's body has ended, before the backend shuts down.
    func stopSystemTasks(waitingAtMost bound: Duration = .seconds(1)) async {
        let parker = Parker<Void>()
        let running = systemTasks.withLock { tasks -> [(scope: CancelScope, task: Task<Void, Never>)] in
            tasks.closing = true
            if !tasks.running.isEmpty { tasks.waiters.append(parker) }
            return Array(tasks.running.values)
        }
        guard !running.isEmpty else { return }
        for (scope, task) in running {
            scope.cancel()
            task.cancel()  // for an await the runtime does not own
        }
        // Shielded from the caller (the run is ending either way), bounded by its own deadline.
        // (Called outside the body, where this runtime is not `current`: the scope is given it explicitly.)
        _ = try? await CancelScope.run(
            runtime: self, deadline: now.advanced(by: max(bound, .zero)), shield: true, isolation: nil
        ) { _ in
            try await Runtime.park(parker) {}
        }
    }
}
