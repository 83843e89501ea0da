import CLibPQ
import Runtime

// COPY FROM STDIN and COPY TO STDOUT: the statement, then its data through libpq's non-blocking COPY calls,
// waiting on the socket through the runtime. What a cancellation does is the state machine's answer; a COPY
// run through `execute` is refused (it would wait for data forever) and ended at once.

extension PostgresConnection {
    /// The size at which written COPY data is handed to libpq, and read data to the caller.
    static let copyChunk = 64 * 1024

    /// Whether `sql` is a COPY statement (leading blanks aside).
    static func isCopy(_ sql: String) -> Bool {
        let start = sql.utf8.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        return start.prefix(4).map { $0 & 0xDF } == Array("COPY".utf8)
    }

    // MARK: COPY FROM STDIN

    /// Runs `sql`, a `COPY … FROM STDIN`, with the data `produce` writes through `send` (called with chunks
    /// of about ``copyChunk`` bytes). Returns the rows copied.
    ///
    /// Until the end of the data is queued, any failure ends the COPY with a failure message — the server
    /// then undoes all of it — and the call throws the cause (`CancellationError` for a cancellation: nothing
    /// was copied). Once the end is queued the COPY may complete, and a cancellation is handled as for any
    /// statement on its way: the server is asked to cancel, and the call reports what happened.
    func copyIn(_ sql: String, _ produce: (_ send: @escaping ([UInt8]) async throws -> Void) async throws -> Void) async throws -> Int {
        try await exclusively(.copyIn, sql) {
            try checkIdentifiers(sql)
            return try await cleaningUp {
                guard try startCopy(sql) else { throw await failure(sql: sql) }
                try await flush(sql: sql)
                try await expectCopy(PGRES_COPY_IN, sql: sql)
                machine.withLock { $0.copyStarted() }
                do {
                    // A cancellation that landed while the server was answering: no data is produced.
                    if machine.withLock({ $0.cancelDeadline }) != nil { throw CancellationError() }
                    try await produce { bytes in try await self.putCopyData(bytes, sql: sql) }
                    try Runtime.checkCancellation()  // the end is a side effect: not queued from cancelled code
                } catch {
                    try await abortCopyIn(because: error, sql: sql)
                }
                try await endCopyIn(sql: sql)
                return try await collect(sql: sql).rowsAffected
            }
        }
    }

    /// Sends the COPY statement as it is (a COPY cannot be prepared).
    private func startCopy(_ sql: String) throws(SQLError) -> Bool {
        try handle.sendQuery(sql, [])
    }

    /// Reads the server's answer to a COPY statement: `expected` (the data phase starts), or an error. A
    /// statement that is not the expected COPY is ended and refused.
    private func expectCopy(_ expected: ExecStatusType, sql: String) async throws {
        guard let result = try await nextResult(sql: sql) else { throw await failure(sql: sql) }
        let status = PQresultStatus(result)
        if status == expected {
            PQclear(result)
            return
        }
        let what = expected == PGRES_COPY_IN ? "COPY … FROM STDIN" : "COPY … TO STDOUT"
        let problem: SQLError
        switch status {
        case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
            PQclear(result)
            _ = try await refuseCopy(status, sql: sql)
            problem = SQLError(.misuse, "this call runs \(what) only; the statement was ended before any data moved", sql: sql)
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            // It ran (a COPY to or from a server file, or not a COPY at all): said so, with its count — never
            // as a cancellation, since it took effect.
            let count = PGHandle.rowsAffected(result)
            PQclear(result)
            _ = try await collect(sql: sql)
            throw SQLError(.misuse, "the statement is not \(what); it ran (\(count) rows) and no data moved", sql: sql)
        default:
            problem = PGHandle.error(from: result, sql: sql)
            PQclear(result)
        }
        // Read to the end of the statement's results: the connection is idle again. (The statement's own
        // error is the one reported; a later one of the same statement adds nothing.)
        do {
            _ = try await collect(sql: sql)
        } catch let error as SQLError where error.kind == .connection || error.kind == .statementInDoubt {
            throw error
        } catch is SQLError {
        }
        if statementFailedAfterCancellation(true) { throw CancellationError() }
        throw problem
    }

    /// Hands `bytes` to libpq in pieces of at most ``copyChunk``, and pushes each out before the next: libpq
    /// would otherwise grow its buffer without end (in non-blocking mode `PQputCopyData` enlarges it rather
    /// than wait), so memory, and the reach of a deadline or a cancellation, stay bounded by the socket. Reads
    /// meanwhile: a server that refused a row says so early.
    private func putCopyData(_ bytes: [UInt8], sql: String) async throws {
        var start = 0
        while start < bytes.count {
            try Runtime.checkCancellation()
            let end = min(bytes.count, start + Self.copyChunk)
            let queued = bytes.withUnsafeBytes { handle.putCopyData(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
            switch queued {
            case 1:
                start = end
                while true {
                    let flushed = handle.flush()
                    if flushed == 0 { break }
                    guard flushed == 1 else { throw await failure(sql: sql) }
                    try await waitDuringCopy(for: [.read, .write], sql: sql)
                }
            case 0: try await waitDuringCopy(for: [.read, .write], sql: sql)
            default: try await throwEndOfCopy(sql: sql)
            }
        }
    }

    /// libpq refused COPY data or its end: the connection is lost, or the server ended the COPY with an
    /// error (a value its column's type refuses, a constraint) — then that error, read to the end of the
    /// results, is thrown, and the connection is idle again.
    private func throwEndOfCopy(sql: String) async throws -> Never {
        guard handle.status == CONNECTION_OK else { throw await failure(sql: sql) }
        _ = try await collect(sql: sql)
        throw SQLError(.database, "the server ended the COPY early", sql: sql)
    }

    /// A wait of the data phase; a cancellation reaches the caller as `CancellationError`, for the COPY's own
    /// code to end it.
    @discardableResult
    private func waitDuringCopy(for events: IOEvents, sql: String) async throws -> IOEvents {
        let fd = try await liveSocket(sql: sql)
        let ready = try await waitForSocket(fd, for: events)
        if ready.contains(.read), !handle.consumeInput() { throw await failure(sql: sql) }
        return ready
    }

    /// Queues the end of the data, then pushes out what is left; from here the COPY may complete.
    private func endCopyIn(sql: String) async throws {
        while true {
            let queued = handle.putCopyEnd(nil)
            if queued == 1 { break }
            if queued != 0 { try await throwEndOfCopy(sql: sql) }
            do {
                try await waitDuringCopy(for: [.read, .write], sql: sql)
            } catch is CancellationError {
                try await abortCopyIn(because: CancellationError(), sql: sql)
            }
        }
        machine.withLock { $0.copyDataEnded() }
        try await flush(sql: sql)
    }

    /// Ends a COPY FROM STDIN before its data is complete: the server undoes all of it. The failure message
    /// names no value (the server quotes it in its log). Reads the server's answer, shielded, within the
    /// cancellation's deadline; without an answer the connection is given up — closing it undoes the COPY
    /// too. Throws `error`.
    private func abortCopyIn(because error: any Error, sql: String) async throws -> Never {
        let now = runtime.now
        let wait = cancellationWait(now: now)
        if error is CancellationError { _ = machine.withLock { $0.cancellationArrived(now: now, grace: wait) } }
        let deadline = machine.withLock { $0.cancelDeadline } ?? now.advanced(by: wait)
        let message = error is CancellationError ? "cancelled by the client" : "the client's data failed (\(Self.typeName(of: error)))"
        let watched = watchedSocket.load(ordering: .acquiring)
        let handle = self.handle
        // Why the COPY did not end cleanly, when it did not.
        let failure: String?
        do {
            failure = try await settling(until: deadline, fd: watched) { waitFor, _ -> String? in
                // Run again from here after a deadline (see `settling`): once the failure is queued, libpq
                // answers "no COPY in progress", and what follows reads on from where it stands.
                while true {
                    let queued = handle.putCopyEnd(message)
                    if queued == 1 { break }
                    guard handle.status == CONNECTION_OK else { return "the connection failed" }
                    if queued < 0 { break }  // no COPY in progress: ended already (by the server, or above)
                    let ready = try await waitFor([.read, .write])
                    if ready.contains(.read), !handle.consumeInput() { return "reading failed" }
                }
                while true {
                    let flushed = handle.flush()
                    if flushed == 0 { break }
                    guard flushed == 1 else { return "writing failed" }
                    let ready = try await waitFor([.read, .write])
                    if ready.contains(.read), !handle.consumeInput() { return "reading failed" }
                }
                // The server's answer: the COPY failed, as asked. Read to the end of the results.
                while true {
                    while handle.isBusy {
                        guard handle.status == CONNECTION_OK else { return "the connection failed" }
                        _ = try await waitFor(.read)
                        guard handle.consumeInput() else { return "reading failed" }
                    }
                    guard let result = handle.nextResult() else { return handle.status == CONNECTION_OK ? nil : "the connection failed" }
                    let status = PQresultStatus(result)
                    PQclear(result)
                    // Still in the COPY: libpq refused the end, and would answer this forever.
                    if status == PGRES_COPY_IN || status == PGRES_COPY_BOTH { return "the COPY did not end" }
                }
            } ?? "no answer within \(wait)"
        } catch {
            failure = "\(Self.typeName(of: error)) while ending it"
        }
        if let failure {
            logger?.warning("discarding a PostgreSQL connection: an abandoned COPY FROM STDIN was not acknowledged: \(failure)")
            markBroken("an abandoned COPY FROM STDIN was not acknowledged (\(failure))")
            await forgetSocket()
        } else {
            machine.withLock { $0.cleanedUp() }
        }
        throw error
    }

    /// A type's name for a message: never the error's description, which may quote values.
    static func typeName(of error: any Error) -> String {
        if let error = error as? SQLError { return "SQLError.\(error.kind)" }
        return String(describing: type(of: error))
    }

    // MARK: COPY TO STDOUT

    /// Runs `sql`, a `COPY … TO STDOUT`, handing its data to `consume` in chunks of about ``copyChunk``
    /// bytes (whole rows in the text and CSV formats). Returns the rows copied.
    ///
    /// When `consume` throws or the call is cancelled, the server is asked to stop and what it still sends is
    /// dropped, within the cancellation's deadline (the connection is given up past it); the call then throws
    /// the cause. A cancelled COPY that completed on the server anyway returns its count when the caller had
    /// all its data, and throws ``SQLError/Kind/cancelled`` saying so when part of it was dropped (a
    /// data-modifying one took effect).
    func copyOut(_ sql: String, _ consume: ([UInt8]) async throws -> Void) async throws -> Int {
        try await exclusively(.copyOut, sql) {
            try checkIdentifiers(sql)
            return try await cleaningUp {
                guard try startCopy(sql) else { throw await failure(sql: sql) }
                try await flush(sql: sql)
                try await expectCopy(PGRES_COPY_OUT, sql: sql)
                machine.withLock { $0.copyStarted() }
                var chunk: [UInt8] = []
                chunk.reserveCapacity(Self.copyChunk)
                do {
                    // A cancellation that landed while the server was answering: nothing is handed over.
                    if machine.withLock({ $0.cancelDeadline }) != nil { throw CancellationError() }
                    reading: while true {
                        switch handle.readCopyData(appendingTo: &chunk) {
                        case .more:
                            if chunk.count >= Self.copyChunk {
                                try await consume(chunk)
                                chunk.removeAll(keepingCapacity: true)
                                // While the server stays ahead, reading never waits, and a wait is where a
                                // cancellation would otherwise be seen: a reader that cancels gets no more data.
                                try Runtime.checkCancellation()
                            }
                        case .wouldBlock:
                            if !chunk.isEmpty {
                                try await consume(chunk)
                                chunk.removeAll(keepingCapacity: true)
                            }
                            try await waitDuringCopy(for: .read, sql: sql)
                        case .done:
                            break reading
                        case .failed:
                            throw await failure(sql: sql)
                        }
                    }
                    if !chunk.isEmpty { try await consume(chunk) }
                } catch let error as SQLError where error.kind == .connection {
                    throw error
                } catch {
                    return try await stopCopyOut(because: error, sql: sql)
                }
                return try await collect(sql: sql).rowsAffected
            }
        }
    }

    /// Stops a COPY TO STDOUT its caller no longer reads: asks the server to cancel it and drops what it
    /// still sends, shielded, within the cancellation's deadline (the connection is given up past it).
    /// Throws `error` — or, when a cancelled COPY had completed anyway, an error saying so.
    private func stopCopyOut(because error: any Error, sql: String) async throws -> Int {
        let now = runtime.now
        let wait = cancellationWait(now: now)
        if error is CancellationError {
            if case .requestCancelAndWait = machine.withLock({ $0.cancellationArrived(now: now, grace: wait) }) { requestCancel() }
        } else if machine.withLock({ $0.shouldRequestCancel() }) {
            requestCancel()
        }
        let deadline = machine.withLock { $0.cancelDeadline } ?? now.advanced(by: wait)
        let watched = watchedSocket.load(ordering: .acquiring)
        let handle = self.handle
        // nil: no answer in time; otherwise the COPY's count when it completed, nil when it failed (the server
        // cancelled it).
        let completed: Int??
        // Whether data the caller never saw was dropped.
        var dropped = false
        // Why the COPY did not end cleanly, when it did not (nil: no end within the deadline).
        var failure: String?
        // The rows of the results read so far; nil once one of them is a failure. This and `dataEnded` are
        // kept across the last look of `settling`, which reads on from where the first pass stopped.
        var count: Int? = 0
        // Whether the data has ended (libpq then answers "no COPY in progress", a failure, to more reads).
        var dataEnded = false
        do {
            completed = try await settling(until: deadline, fd: watched) { waitFor, _ -> Int?? in
                dropping: while !dataEnded {
                    switch handle.dropCopyData() {
                    case .more: dropped = true
                    case .wouldBlock:
                        _ = try await waitFor(.read)
                        guard handle.consumeInput() else { failure = "the connection failed"; return .none }
                    case .done:
                        dataEnded = true
                        break dropping
                    case .failed: failure = "the connection failed"; return .none
                    }
                }
                while true {
                    while handle.isBusy {
                        guard handle.status == CONNECTION_OK, handle.consumeInput() else { failure = "the connection failed"; return .none }
                        if handle.isBusy { _ = try await waitFor(.read) }
                    }
                    guard let result = handle.nextResult() else {
                        if handle.status == CONNECTION_OK { return .some(count) }
                        failure = "the connection failed"
                        return .none
                    }
                    if PQresultStatus(result) == PGRES_COMMAND_OK { count = count.map { $0 + PGHandle.rowsAffected(result) } } else { count = nil }
                    PQclear(result)
                }
            } ?? .none
        } catch {
            failure = "\(Self.typeName(of: error)) while reading its end"
            completed = .none
        }
        guard let outcome = completed else {
            let why = failure ?? "it did not end within \(wait)"
            logger?.warning("discarding a PostgreSQL connection: a COPY TO STDOUT left early: \(why)")
            markBroken("a COPY TO STDOUT left early did not end (\(why))")
            await forgetSocket()
            throw error
        }
        machine.withLock { $0.cleanedUp() }
        // Completed on the server although the caller stopped reading. With all its data handed over, that is
        // a result like any statement's that finished anyway (the caller's next checkpoint throws). With part
        // of it dropped, it is said so — not reported as a cancellation (a data-modifying COPY, `COPY (DELETE …
        // RETURNING …) TO STDOUT`, took effect) nor as a success (the caller lacks data). The consumer's own
        // error is what its caller needs, whatever the server did.
        if let count = outcome, error is CancellationError {
            guard dropped else { return count }
            throw SQLError(
                .cancelled,
                "the COPY completed on the server (\(count) rows) but was cancelled before all its output was read; a "
                    + "data-modifying COPY took effect", sql: sql)
        }
        throw error
    }

    // MARK: COPY through execute

    /// Ends a COPY the statement started (the protocol would otherwise wait for data forever) and returns the
    /// error to report: COPY FROM STDIN is ended with a failure the server turns into an error; the data of
    /// COPY TO STDOUT is read and dropped.
    func refuseCopy(_ status: ExecStatusType, sql: String) async throws -> SQLError {
        let refusal = SQLError(.misuse, "COPY … FROM STDIN / TO STDOUT runs through copyIn, copyOut or copy(_:into:columns:), not execute", sql: sql)
        switch status {
        case PGRES_COPY_IN:
            guard handle.putCopyEnd(failing: "COPY through execute is refused by SQLAsync") else { throw await failure(sql: sql) }
            try await flush(sql: sql)
        case PGRES_COPY_OUT:
            while true {
                switch handle.dropCopyData() {
                case .more: continue
                case .wouldBlock:
                    try await waitOnSocket(for: .read, sql: sql)
                    guard handle.consumeInput() else { throw await failure(sql: sql) }
                case .done: return refusal
                case .failed: throw await failure(sql: sql)
                }
            }
        default:
            // Replication's COPY BOTH: no way back to the normal protocol.
            markBroken("a COPY BOTH (replication) result")
            await forgetSocket()
            handle.finish()
        }
        return refusal
    }
}
