import Synchronization

/// The system tasks of one run: started by library code for work that must outlive its caller, cancelled and
/// awaited when the run's body has ended.
struct SystemTasks: Sendable {
    var scopes: [Int: CancelScope] = [:]
    var nextID = 0
    /// The run's body has ended: new system tasks do not start, running ones are cancelled.
    var closing = false
    /// The shutdown waiting for the last one to end.
    var waiter: UnsafeContinuation<Void, Never>?
}

extension Runtime {
    /// Starts `work` as a system task of this run (trio's `spawn_system_task`): it belongs to the run, not
    /// to the task that starts it, so it can finish clean-up after its caller has returned — a cancel request
    /// to a database server that has stopped answering, say, which must not hold the caller past its deadline.
    ///
    /// `work` runs on the runtime's executor with this runtime as ``current``, in a cancel scope of its own
    /// outside every caller's: no caller's cancellation or deadline reaches it, so give it a deadline of its
    /// own. When the run's body has ended, every system task still running is cancelled and the run waits for
    /// it before the backend shuts down; a system task must therefore end promptly once cancelled (every
    /// runtime wait does).
    ///
    /// - Returns: whether `work` was started; `false` once the run's body has ended.
    @discardableResult
    public func startSystemTask(_ work: @escaping @Sendable () async -> Void) -> Bool {
        let id = systemTasks.withLock { tasks -> Int? in
            guard !tasks.closing else { return nil }
            tasks.nextID += 1
            return tasks.nextID
        }
        guard let id else { return false }
        accounting.taskStarted()
        Task(executorPreference: backend.executor) {
            await Runtime.$taskLocal.withValue(self) {
                await CancelScope.$current.withValue(nil) {
                    _ = try? await withCancelScope { scope in
                        let closing = self.systemTasks.withLock { tasks -> Bool in
                            if !tasks.closing { tasks.scopes[id] = scope }
                            return tasks.closing
                        }
                        if closing { scope.cancel() }
                        await work()
                    }
                }
            }
            let waiter = self.systemTasks.withLock { tasks -> UnsafeContinuation<Void, Never>? in
                tasks.scopes[id] = nil
                guard tasks.closing, tasks.scopes.isEmpty else { return nil }
                defer { tasks.waiter = nil }
                return tasks.waiter
            }
            self.accounting.taskFinished()
            waiter?.resume()
        }
        return true
    }

    /// System tasks still running.
    public var systemTaskCount: Int { systemTasks.withLock { $0.scopes.count } }

    /// Cancels every system task and waits until each has ended; later ones do not start. Called once the
    /// run's body has ended, before the backend shuts down.
    func stopSystemTasks() async {
        let running = systemTasks.withLock { tasks -> [CancelScope] in
            tasks.closing = true
            return Array(tasks.scopes.values)
        }
        for scope in running { scope.cancel() }
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = systemTasks.withLock { tasks -> Bool in
                if tasks.scopes.isEmpty { return true }
                tasks.waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
    }
}
