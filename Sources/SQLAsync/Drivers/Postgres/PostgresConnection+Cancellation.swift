import CLibPQ
import Runtime

#if canImport(Glibc)
import Glibc
#endif

// What a cancellation does to a call that has begun: the waits that keep going once a statement is on its way,
// and the clean-up that leaves the connection idle (or gives it up) before the call returns. The decisions are
// PostgresStateMachine's; this file does the IO.

extension PostgresConnection {
    /// Waits for the socket during a call.
    ///
    /// A cancellation that lands here is handed to the state machine. A batch not fully sent stops, and the
    /// connection is closed, which rolls it back; a stream is cleaned up and cut short. A statement on its way
    /// is not abandoned, since it may be running, or done, on the server: the first cancellation asks the
    /// server to cancel it (once it is fully sent: the server reads a cancel only between messages; the request
    /// goes out on a system task, out of the caller's way), and the call keeps waiting, shielded, for the
    /// server's answer — at most ``grace`` beyond the caller's deadline (``cancellationWait(now:)``). A
    /// statement that finished anyway then reports its result (the caller's next checkpoint throws), and one
    /// the server cancelled reports the cancellation (``statementFailedAfterCancellation(_:)``). No answer in
    /// that time: the connection is
    /// given up, and the call throws ``SQLError/Kind/statementInDoubt`` (or `CancellationError` when the
    /// statement never left whole). "Cancelled" always means it did not happen.
    @discardableResult
    func waitOnSocket(for events: IOEvents, sql: String) async throws -> IOEvents {
        let fd = try await liveSocket(sql: sql)
        do {
            return try await waitForSocket(fd, for: events)
        } catch is CancellationError {
            let now = runtime.now
            let wait = cancellationWait(now: now)
            let action = machine.withLock { $0.cancellationArrived(now: now, grace: wait) }
            let deadline: RuntimeInstant
            switch action {
            case .stop(let closeConnection):
                if closeConnection {
                    logger?.info("closing a PostgreSQL connection: a batch was cancelled before it was fully sent (the server rolls it back)")
                    await forgetSocket()
                    handle.finish()
                }
                throw CancellationError()
            case .cleanUpAndStop:
                throw CancellationError()  // the call's cleaningUp { } cleans up
            case .requestCancelAndWait(let until):
                requestCancel()
                deadline = until
            case .wait(let until):
                deadline = until
            case .abortCopy:
                throw CancellationError()  // the COPY's own code ends it (its data phase does not wait here)
            }
            let ready: IOEvents? = try await withCancelScope(deadline: deadline, shield: true) { _ in
                try await waitForSocket(fd, for: events)
            }
            // The deadline and the answer can come together on a loaded machine (the timer's thread ran first):
            // the socket is looked at once more before the statement is called in doubt.
            guard let ready = ready ?? readyWithoutWaiting(fd, for: events) else {
                // No answer in time: the connection is given up (the pool closes it), and the statement's fate
                // is unknown once it was sent whole.
                let outcome = machine.withLock { $0.cancelDeadlinePassed(wait) }
                await forgetSocket()
                logger?.warning("discarding a PostgreSQL connection: no answer within \(wait) of a cancellation")
                if outcome == .cancelled { throw CancellationError() }
                throw SQLError(
                    .statementInDoubt,
                    "the statement was sent, then cancelled, and the server did not answer within \(wait): it may or "
                        + "may not have taken effect; the connection was closed", sql: sql)
            }
            // Readable is not yet an answer to the cancel: a NOTICE or the first rows of a statement the first
            // request missed make the socket readable too. The request is sent again unless the call settles
            // (its results all read) first.
            return ready
        }
    }

    /// What the socket is ready for right now, without waiting; nil when nothing asked for.
    static func readyNow(_ fd: Int32, for events: IOEvents) -> IOEvents? {
        var request = pollfd(fd: fd, events: 0, revents: 0)
        if events.contains(.read) { request.events |= Int16(POLLIN) }
        if events.contains(.write) { request.events |= Int16(POLLOUT) }
        guard poll(&request, 1, 0) == 1 else { return nil }
        var ready: IOEvents = []
        // An error or a hang-up counts as readable: reading then reports what happened.
        if request.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0, events.contains(.read) { ready.insert(.read) }
        if request.revents & Int16(POLLOUT | POLLERR | POLLHUP) != 0, events.contains(.write) { ready.insert(.write) }
        return ready.isEmpty ? nil : ready
    }

    /// What the connection's socket is ready for right now, without waiting — reading counted when OpenSSL
    /// holds bytes libpq has not read (``PGHandle/hasPendingTLSData``); nil when nothing asked for.
    func readyWithoutWaiting(_ fd: Int32, for events: IOEvents) -> IOEvents? {
        if events.contains(.read), handle.hasPendingTLSData { return .read }
        return Self.readyNow(fd, for: events)
    }

    /// Thrown by a wait of ``settling(until:fd:_:)``'s last look when the socket is not ready, or the look's
    /// budget is spent.
    struct NoAnswerYet: Error {}

    /// How many times the last look of ``settling(until:fd:_:)`` may find the socket ready: enough for an
    /// answer that has arrived (each read takes 8 KiB or more), never a drain of a statement still running.
    static let lastLookReads = 16

    /// Runs the clean-up `body`, shielded, until `deadline`, waiting on the socket through the runtime with
    /// the `waitFor` it is given (`lastLook` false). When the deadline passes first, `body` runs once more,
    /// with `lastLook` true and a `waitFor` that only looks (``readyWithoutWaiting(_:for:)``) and throws
    /// ``NoAnswerYet`` when the socket is not ready, or after ``lastLookReads`` looks: after a stall of the
    /// whole process (a loaded machine, a paused virtual machine) the timer and the server's answer come due
    /// together, and the timer's thread may run first — an answer that is already there is not thrown away.
    /// The look never waits, and reads only so much. `body` must be safe to run again from its start: each
    /// step asks libpq where it stands, and what libpq cannot say (the end of a COPY's data) is kept outside
    /// `body`. Returns nil when there was no answer by then.
    func settling<T>(
        until deadline: RuntimeInstant, fd: Int32,
        _ body: (_ waitFor: (IOEvents) async throws -> IOEvents, _ lastLook: Bool) async throws -> T
    ) async throws -> T? {
        let answered: T? = try await withCancelScope(deadline: deadline, shield: true) { _ in
            try await body({ events in try await waitForSocket(fd, for: events) }, false)
        }
        if let answered { return answered }
        var looks = 0
        do {
            return try await body({ events in
                looks += 1
                guard looks <= Self.lastLookReads, let ready = readyWithoutWaiting(fd, for: events) else { throw NoAnswerYet() }
                return ready
            }, true)
        } catch is NoAnswerYet {
            return nil
        }
    }

    /// After a call's results: whether a cancellation landed during it and the statement did not complete
    /// (the server cancelled it, or it failed): then the call throws `CancellationError`, as nothing happened.
    func statementFailedAfterCancellation(_ failed: Bool) -> Bool {
        machine.withLock { $0.resultsRead(failed: failed) } == .reportCancellation
    }

    /// Runs one exchange with the server: a cancellation cleans the connection up (cancel request and
    /// drain), a connection error marks it broken.
    func cleaningUp<T>(_ exchange: () async throws -> T) async throws -> T {
        do {
            return try await exchange()
        } catch let error as CancellationError {
            await cleanUp()
            throw error
        } catch let error as SQLError where error.kind == .connection {
            markBroken(error.message)
            throw error
        }
    }

    /// Leaves the connection idle after a call that was cancelled, failed part-way or was left early (a
    /// stream): pushes out what is queued, asks the server to cancel what still runs, and reads and drops
    /// the rest of the results — in pipeline mode up to the last sync, then leaves it. Shielded, within
    /// ``cancellationWait(now:)``; the connection is given up when that fails. A late cancel can then never hit
    /// the next query.
    func cleanUp() async {
        let now = runtime.now
        let wait = cancellationWait(now: now)
        // nil: given up already (its socket registration is gone, and waiting on the fd again would register
        // it anew under a connection about to be closed).
        guard let deadline = machine.withLock({ $0.cleanUpStarted(now: now, grace: wait) })
        else { return }
        let handle = self.handle
        let pipeline = handle.isInPipelineMode
        guard pipeline || handle.isBusy || handle.hasPendingResults else {
            machine.withLock { $0.cleanedUp() }
            return
        }
        let watched = watchedSocket.load(ordering: .acquiring)
        let failure: String?
        do {
            failure = try await settling(until: deadline, fd: watched) { waitFor, lastLook -> String? in
                guard handle.status == CONNECTION_OK, handle.socket == watched else { return "the connection is gone" }
                // A query cancelled while it was being sent is pushed out whole first: the server reads a
                // cancel only between messages, and answers only a complete one.
                while true {
                    let flushed = handle.flush()
                    if flushed == 0 { break }
                    guard flushed == 1 else { return "writing failed" }
                    let ready = try await waitFor([.read, .write])
                    if ready.contains(.read), !handle.consumeInput() { return "reading failed" }
                }
                // Still running on the server: ask it to stop. Not only while libpq is busy — in single-row mode
                // libpq is "not busy" whenever one row is buffered, and then a stream left after 10 rows of a
                // million drained all the rest (seconds on a loaded machine, past the deadline). A cancel that
                // reaches a session after its query ended is ignored by the server (it is idle by then: this
                // drain waits for the query's end before the connection is used again).
                // (Not in the last look, past the deadline: the connection is given up unless it is already done.)
                if !lastLook, handle.isBusy || handle.hasPendingResults, machine.withLock({ $0.shouldRequestCancel() }) {
                    requestCancel()
                }
                return try await drain(pipeline: pipeline, waitFor)
            } ?? "no answer within \(wait)"
        } catch {
            failure = "\(error)"
        }
        if let failure {
            logger?.warning("discarding a PostgreSQL connection: the clean-up after a cancelled query failed: \(failure)")
            markBroken("the clean-up after a cancelled query failed: \(failure)")
            await forgetSocket()
        } else {
            machine.withLock { $0.cleanedUp() }
        }
    }

    /// Reads and drops results until libpq has none left (in pipeline mode: up to the last sync, then leaves
    /// it); returns why that failed, or nil.
    private func drain(pipeline: Bool, _ waitFor: (IOEvents) async throws -> IOEvents) async throws -> String? {
        var ends = 0
        while true {
            while handle.isBusy {
                guard handle.status == CONNECTION_OK else { return "the server closed the connection" }
                _ = try await waitFor(.read)
                guard handle.consumeInput() else { return "reading failed" }
            }
            guard let result = handle.nextResult() else {
                guard pipeline else { return nil }
                // In a pipeline, one end per command; two in a row with nothing to wait for would spin forever.
                ends += 1
                if ends > 1 { return "a batch ended without its sync" }
                continue
            }
            ends = 0
            let status = PQresultStatus(result)
            PQclear(result)
            // A COPY in progress answers every call with another COPY result, never the end: give up.
            if status == PGRES_COPY_IN || status == PGRES_COPY_OUT || status == PGRES_COPY_BOTH {
                return "a COPY was in progress"
            }
            // Leaving pipeline mode succeeds once nothing is pending: after the last sync.
            if pipeline, status == PGRES_PIPELINE_SYNC, handle.exitPipelineMode() { return nil }
        }
    }
}
