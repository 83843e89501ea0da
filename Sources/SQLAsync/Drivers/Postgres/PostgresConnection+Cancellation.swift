import CLibPQ
import Runtime

// What a cancellation does to a call that has begun: the waits that keep going once a statement is on its way,
// and the clean-up that leaves the connection idle (or gives it up) before the call returns.

extension PostgresConnection {
    /// Waits for the socket during a call whose statement is on its way to the server.
    ///
    /// A cancellation that lands here does not abandon the call, since the statement may be running, or done,
    /// on the server. The first one asks the server to cancel it (`canCancelServer`: once it is fully sent;
    /// the server reads a cancel only between messages), and the call keeps waiting, shielded, within the
    /// clean-up deadline, for the server's answer: a statement that finished anyway then reports its result
    /// (the caller's next checkpoint throws), and one the server cancelled reports the cancellation
    /// (``statementFailedAfterCancellation()``). "Cancelled" always means it did not happen.
    @discardableResult
    func waitOnSocket(for events: IOEvents, sql: String, canCancelServer: Bool) async throws -> IOEvents {
        let fd = try await liveSocket(sql: sql)
        do {
            return try await runtime.wait(fd: fd, for: events)
        } catch is CancellationError {
            let deadline = lateCancel.withLock { state -> RuntimeInstant in
                let deadline = state.deadline ?? runtime.now.advanced(by: Self.cleanUpDeadline)
                state.deadline = deadline
                return deadline
            }
            let handle = self.handle
            let ready: IOEvents? = try await withCancelScope(deadline: deadline, shield: true) { _ in
                let first = canCancelServer && lateCancel.withLock { state in
                    defer { state.requested = true }
                    return !state.requested
                }
                if first {
                    let cancel = handle.cancelObject()
                    // Abandoned at the deadline: PQcancel blocks while it connects.
                    _ = try await runtime.runBlocking(onCancel: .abandon) { cancel?.send() ?? false }
                }
                return try await runtime.wait(fd: fd, for: events)
            }
            guard let ready else {
                // No answer in time: the statement's fate is unknown, and the connection is given up.
                markBroken("no answer within \(Self.cleanUpDeadline) after a cancelled statement")
                await forgetSocket()
                throw CancellationError()
            }
            return ready
        }
    }

    /// After a call's results: whether a cancellation landed during it and the statement did not complete
    /// (the server cancelled it, or it failed): then the call throws `CancellationError`, as nothing happened.
    func statementFailedAfterCancellation(_ failed: Bool) -> Bool {
        failed && lateCancel.withLock { $0.deadline != nil }
    }

    /// After a cancelled await mid-query: ask the server to cancel, wait for its answer and drain, all in a
    /// shielded scope with its own deadline. A late cancel can then never hit the next query.
    func cleanUpAfterCancellation() async {
        // Already given up (a clean-up before this one failed): its socket registration is gone, and waiting
        // on the fd again would register it anew under a connection about to be closed.
        guard !brokenFlag.load(ordering: .acquiring) else { return }
        let handle = self.handle
        let watched = watchedSocket.load(ordering: .acquiring)
        let failure: String?
        do {
            failure = try await withCancelScope(
                deadline: runtime.now.advanced(by: Self.cleanUpDeadline), shield: true
            ) { _ -> String? in
                guard handle.isBusy || handle.hasPendingResults else { return nil }
                guard handle.status == CONNECTION_OK, handle.socket == watched else { return "the connection is gone" }
                // A query cancelled while it was being sent is pushed out whole first: the server reads a
                // cancel only between messages, and answers only a complete one.
                while true {
                    let flushed = handle.flush()
                    if flushed == 0 { break }
                    guard flushed == 1 else { return "writing failed" }
                    let ready = try await runtime.wait(fd: watched, for: [.read, .write])
                    if ready.contains(.read), !handle.consumeInput() { return "reading failed" }
                }
                // Still running on the server: ask it to stop. Not only while libpq is busy — in single-row mode
                // libpq is "not busy" whenever one row is buffered, and then a stream left after 10 rows of a
                // million drained all the rest (seconds on a loaded machine, past the deadline). A cancel that
                // reaches a session after its query ended is ignored by the server (it is idle by then: this
                // drain waits for the query's end before the connection is used again).
                if handle.isBusy || handle.hasPendingResults {
                    let cancel = handle.cancelObject()
                    // Abandoned at the deadline: PQcancel blocks while it connects, and an unreachable server
                    // must not hold the clean-up past it.
                    _ = try await runtime.runBlocking(onCancel: .abandon) { cancel?.send() ?? false }
                }
                // Drain until libpq reports no more results: the cancelled query's error, or its normal end.
                while true {
                    while handle.isBusy {
                        guard handle.status == CONNECTION_OK else { return "the server closed the connection" }
                        try await runtime.wait(fd: watched, for: .read)
                        guard handle.consumeInput() else { return "reading failed" }
                    }
                    guard let result = handle.nextResult() else { return nil }
                    let status = PQresultStatus(result)
                    PQclear(result)
                    // A COPY in progress answers every call with another COPY result, never the end: give up.
                    if status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH {
                        return "a COPY was in progress"
                    }
                }
            } ?? "no answer within \(Self.cleanUpDeadline)"
        } catch {
            failure = "\(error)"
        }
        if let failure {
            logger?.warning("discarding a PostgreSQL connection: the clean-up after a cancelled query failed: \(failure)")
            markBroken("the clean-up after a cancelled query failed: \(failure)")
            await forgetSocket()
        }
    }

    /// After a cancelled or failed pipeline, shielded and with a deadline. Before the sync was sent, the
    /// connection is closed: a sync now would commit the commands already run, so closing (which makes the
    /// server roll them back) is the only way the batch stays all-or-nothing. After the sync: cancel what
    /// runs, drain to the sync, leave pipeline mode. The connection is broken if that fails.
    func cleanUpPipeline(synced: Bool) async {
        guard handle.isInPipelineMode, !brokenFlag.load(ordering: .acquiring) else { return }  // nothing is left
        guard synced else {
            logger?.info("closing a PostgreSQL connection: a batch was cancelled before it was fully sent (the server rolls it back)")
            markBroken("a batch was cancelled before it was fully sent")
            await forgetSocket()
            handle.finish()
            return
        }
        let handle = self.handle
        let clean: Bool? = try? await withCancelScope(
            deadline: runtime.now.advanced(by: Self.cleanUpDeadline), shield: true
        ) { _ in
            if handle.isBusy {
                let cancel = handle.cancelObject()
                _ = try await runtime.runBlocking(onCancel: .abandon) { cancel?.send() ?? false }
            }
            var ends = 0
            while true {
                switch handle.flush() {
                case 0: break
                case 1:
                    let ready = try await runtime.wait(fd: handle.socket, for: [.read, .write])
                    if ready.contains(.read), !handle.consumeInput() { return false }
                    continue
                default: return false
                }
                while handle.isBusy {
                    guard handle.status == CONNECTION_OK else { return false }
                    try await runtime.wait(fd: handle.socket, for: .read)
                    guard handle.consumeInput() else { return false }
                }
                guard let result = handle.nextResult() else {
                    // One end per command; two in a row with nothing to wait for would spin forever.
                    ends += 1
                    if ends > 1 { return false }
                    continue
                }
                ends = 0
                let status = PQresultStatus(result)
                PQclear(result)
                if status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH { return false }
                // Leaving pipeline mode succeeds once nothing is pending: after the last sync.
                if status == PGRES_PIPELINE_SYNC, handle.exitPipelineMode() { return true }
            }
        }
        if clean != true {
            logger?.warning("discarding a PostgreSQL connection: the clean-up after a cancelled batch failed")
            markBroken("the clean-up after a cancelled batch failed")
            await forgetSocket()
        }
    }
}
