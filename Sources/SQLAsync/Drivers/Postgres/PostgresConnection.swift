import CLibPQ
import Logging
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One PostgreSQL connection: libpq in non-blocking mode, waiting on its socket only through the runtime's
/// readiness wait, so the same code runs on every backend.
///
/// A connection serves one task at a time (the pool hands it out as a lease); a second concurrent call is a
/// ``SQLError/Kind/misuse`` error, not a corrupted protocol stream. Who holds the connection, what a
/// cancellation does to a running call and what the call then reports are decided by a pure
/// ``PostgresStateMachine``; this type does the IO it asks for.
///
/// Cancellation: nothing is sent from cancelled code. Once a statement is on its way, a cancellation sends a
/// cancel request (without blocking, on a system task of the run: ``PostgresCancelKey``) and the call keeps
/// reading, shielded, at most ``grace`` longer: it throws `CancellationError` when the server cancelled the
/// statement and returns the result when it finished anyway, so the connection is clean when the call
/// returns; with no answer in time the connection is given up and the call throws
/// ``SQLError/Kind/statementInDoubt``.
final class PostgresConnection: Sendable {
    let runtime: Runtime
    let handle: PGHandle
    /// The engine's logger: a connection given up says why (never with values).
    let logger: Logger?
    /// Who uses the connection and how far its call got. libpq's connection is touched only by the call
    /// holding it, or by a close when none does.
    let machine = Locked(PostgresStateMachine())
    /// The socket the runtime watches. libpq closes its socket by itself when the connection is lost, so
    /// this is kept to `forget` it on every failure (a stale registration would hang the next user of the
    /// fd number).
    let watchedSocket = Atomic<Int32>(-1)
    /// Statements this connection prepared, by SQL text and parameter types.
    let statements = Locked(StatementCache())

    /// How long a call waits, beyond its caller's deadline, for the server to answer a cancellation: past it,
    /// the connection is given up and closed, out of the caller's way.
    let grace: Duration
    /// The key for cancel requests, read once connected; nil when libpq's cancel object could not be read
    /// (then `PQcancel` is used).
    let cancelKey = Locked<PostgresCancelKey?>(nil)
    /// The cancel requests on their way for the running call (see ``requestCancel()``).
    let cancelRequest = Locked<CancelRequests?>(nil)

    /// The default of ``grace``.
    static let defaultGrace: Duration = .seconds(1)

    /// The most a clean-up may take (a drain after a stream left early, or after a cancellation by
    /// `cancel()` with no deadline near) before the connection is given up.
    static let cleanUpLimit: Duration = .seconds(5)

    /// Waits until the socket is ready for `events` through the runtime — or returns `.read` at once when
    /// OpenSSL holds bytes of the connection that libpq has not read (``PGHandle/hasPendingTLSData``): the
    /// socket's readiness does not show those, and may never. Every wait of the connection goes through here.
    /// A cancellation point either way.
    func waitForSocket(_ fd: Int32, for events: IOEvents) async throws -> IOEvents {
        if events.contains(.read), handle.hasPendingTLSData {
            try Runtime.checkCancellation()
            return .read
        }
        return try await runtime.wait(fd: fd, for: events)
    }

    /// How long, from `now`, a call may keep reading after a cancellation, or for a clean-up: up to the
    /// caller's deadline plus ``grace`` (just the grace when the cancellation came from that deadline), and
    /// never more than ``cleanUpLimit``.
    func cancellationWait(now: RuntimeInstant) -> Duration {
        let limit = now.advanced(by: Self.cleanUpLimit)
        let caller = Runtime.currentDeadline()
        let bound = caller.isNever ? limit : min(limit, max(caller, now).advanced(by: grace))
        return now.duration(to: bound)
    }

    init(runtime: Runtime, handle: PGHandle, logger: Logger?, grace: Duration = PostgresConnection.defaultGrace) {
        self.runtime = runtime
        self.handle = handle
        self.logger = logger
        self.grace = grace
    }

    /// Whether an error aborted the session's transaction: a COMMIT now would roll back, silently.
    var isInFailedTransaction: Bool { machine.withLock { $0.transaction } == .failed }

    /// Whether the server had a transaction open (or failed) after the last call: libpq's transaction status,
    /// recorded as each call gives the connection back (reading libpq meanwhile could race with a call).
    var isInTransaction: Bool {
        let transaction = machine.withLock { $0.transaction }
        return transaction == .inTransaction || transaction == .failed
    }

    /// Whether a failed clean-up or a lost server left this connection unusable, or it was closed.
    var isBroken: Bool { machine.withLock { $0.isBroken } }

    /// Whether the connection can go back to a pool: no call or stream holds it, not broken, and the session
    /// idle outside any transaction (as the last call left it).
    func isReusable() async -> Bool { machine.withLock { $0.isReusable } }

    // MARK: Queries

    /// Sends `sql` with `binds` (`$1`, `$2`, … placeholders) and returns every row of its result.
    func execute(_ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        let key = StatementCache.key(sql, binds)
        return try await exclusively(.statement, sql) {
          try await cleaningUp {
            // COPY cannot run in pipeline mode (where statements are prepared): sent as it is, and refused.
            if Self.isCopy(sql) {
                try checkIdentifiers(sql)
                guard try handle.sendQuery(sql, binds) else { throw await failure(sql: sql) }
                try await flush(sql: sql)
                return try await collect(sql: sql)
            }
            // The entry and the mode under one lock (this is every cached statement's path).
            if let (entry, unnamed) = statements.withLock({ cache in cache.lookUp(key).map { ($0, cache.unnamed) } }) {
                do {
                    if unnamed { return try await runUnnamed(entry, sql, binds) }
                    return try await runPrepared(entry, sql, binds)
                } catch let error as SQLError where StatementCache.isStale(error) {
                    // The server lost every statement (DISCARD ALL) or invalidated this one (a changed table):
                    // forget it, and prepare anew and run again — only outside a transaction, where the failure
                    // changed nothing (inside one, the transaction has failed: the caller rolls it back).
                    statements.withLock { cache in
                        if error.sqlState == "26000" { cache.removeAll() } else { cache.remove(key, deallocate: true) }
                    }
                    guard handle.isIdleOutsideTransaction else { throw error }
                }
            }
            return try await prepareAndRun(key, sql, binds)
          }
        }
    }

    /// Runs a script of several statements through the simple query protocol (no parameters); stops at the
    /// first error, which the server reports after rolling back the script's implicit transaction.
    func executeScript(_ script: String) async throws {
        try await exclusively(.script, script) {
            try checkIdentifiers(script)
            return try await cleaningUp {
                guard handle.sendSimpleQuery(script) else { throw await failure(sql: script) }
                try await flush(sql: script)
                _ = try await collect(sql: script)
            }
        }
    }

    /// Takes the connection for one call: one task at a time, and never once broken or closed.
    func acquire(_ kind: PostgresStateMachine.Kind, _ sql: String) throws(SQLError) {
        if case .fail(let error) = machine.withLock({ $0.startCall(kind, sql: sql) }) { throw error }
    }

    /// Gives the connection back after a call, recording the server's transaction state; closes it when a
    /// close came meanwhile.
    func release() async {
        // A cancel request still on its way could hit the next statement: waited for within the grace, or the
        // connection is given up. (Nothing to do, and no clock read, after a call that sent none.)
        await settleCancelRequest()
        let transaction: PostgresStateMachine.TransactionState =
            switch handle.transactionStatus {
            case PQTRANS_IDLE: .idle
            case PQTRANS_INTRANS: .inTransaction
            case PQTRANS_INERROR: .failed
            default: .unknown
            }
        guard machine.withLock({ $0.endCall(transaction: transaction) }) == .close else { return }
        await forgetSocket()
        handle.finish()
    }

    /// Runs `body` holding the connection. Nothing is sent from code that is cancelled already: the call
    /// throws `CancellationError` and has no effect.
    func exclusively<T>(_ kind: PostgresStateMachine.Kind, _ sql: String, _ body: () async throws -> T) async throws -> T {
        try Runtime.checkCancellation()
        try acquire(kind, sql)
        do {
            let result = try await body()
            await release()
            return result
        } catch {
            await release()
            throw error
        }
    }

    /// Pushes out what libpq has queued; while its buffer is full, waits for write readiness, and reads
    /// meanwhile so that a server blocked writing to us cannot deadlock the exchange. `whileSending`: more of
    /// the call's messages are still to be queued; otherwise the call is sent once this returns. What a
    /// cancellation does meanwhile is the state machine's answer (``waitOnSocket(for:sql:)``).
    func flush(sql: String, whileSending: Bool = false) async throws {
        while true {
            switch handle.flush() {
            case 0:
                if !whileSending { machine.withLock { $0.sent() } }
                return
            case 1:
                let ready = try await waitOnSocket(for: [.read, .write], sql: sql)
                if ready.contains(.read), !handle.consumeInput() { throw await failure(sql: sql) }
            default: throw await failure(sql: sql)
            }
        }
    }

    /// The running call's next result, waiting for the socket while libpq is busy; `nil` at the end of a
    /// command's results. The caller clears it.
    func nextResult(sql: String) async throws -> OpaquePointer? {
        while handle.isBusy {
            try await waitOnSocket(for: .read, sql: sql)
            guard handle.consumeInput() else { throw await failure(sql: sql) }
        }
        return handle.nextResult()
    }

    /// Reads results until libpq has none left; returns the rows of the last one with tuples or the command
    /// counts, or throws the server's error.
    func collect(sql: String) async throws -> RawRows {
        var rows = RawRows()
        var serverError: SQLError?
        while let result = try await nextResult(sql: sql) {
            defer { PQclear(result) }
            switch PQresultStatus(result) {
            case PGRES_TUPLES_OK, PGRES_SINGLE_TUPLE:
                rows = PGHandle.decode(result)
                rows.rowsAffected = PGHandle.rowsAffected(result)  // INSERT … RETURNING counts its rows
            case PGRES_COMMAND_OK: rows.rowsAffected = PGHandle.rowsAffected(result)
            case PGRES_EMPTY_QUERY: break
            case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
                let refusal = try await refuseCopy(PQresultStatus(result), sql: sql)
                serverError = serverError ?? refusal
            default: serverError = serverError ?? PGHandle.error(from: result, sql: sql)
            }
        }
        if handle.status != CONNECTION_OK {
            // The server ended the session (for example pg_terminate_backend): libpq has closed the socket.
            let lost = await failure(sql: sql)
            throw serverError.map { SQLError(.connection, $0.message, sqlState: $0.sqlState, sql: sql) } ?? lost
        }
        if statementFailedAfterCancellation(serverError != nil) { throw CancellationError() }
        if let serverError { throw serverError }
        return rows
    }

    /// The socket to wait on, or the connection error when libpq has lost (and closed) it — then the
    /// registration is dropped at once, before another task can reuse the fd number.
    func liveSocket(sql: String) async throws -> Int32 {
        let fd = handle.socket
        guard handle.status == CONNECTION_OK, fd >= 0, fd == watchedSocket.load(ordering: .acquiring) else {
            throw await failure(sql: sql)
        }
        return fd
    }

    /// Refuses `sql` when it names an identifier the server would truncate (reading the server's string
    /// syntax: call it while holding the connection).
    func checkIdentifiers(_ sql: String) throws(SQLError) {
        try PostgresIdentifiers.check(sql, backslashEscapes: handle.backslashEscapesInStrings)
    }

    /// Marks the connection broken, keeping the first reason for later errors.
    func markBroken(_ reason: String) { machine.withLock { $0.connectionFailed(reason) } }

    /// Marks the connection broken and drops the runtime's registration of its socket before anything else
    /// can reuse the number; returns the error to throw.
    func failure(sql: String) async -> SQLError {
        let error = handle.connectionError("the connection failed", sql: sql)
        markBroken(error.message)
        await forgetSocket()
        return error
    }

    func forgetSocket() async {
        let fd = watchedSocket.exchange(-1, ordering: .acquiringAndReleasing)
        if fd >= 0 { await runtime.forget(fd: fd) }
    }

    // MARK: Closing

    deinit {
        // Dropped without close() (the pool closes what a dropped Connection held, so this is a connection
        // used without a pool): closed once the runtime has let go of its socket, which a deinit cannot
        // await. After the run, the registrations are gone and PGHandle's deinit closes it.
        let fd = watchedSocket.load(ordering: .acquiring)
        if fd >= 0, !runtime.backend.diagnostics().isClosed {
            logger?.warning("a PostgreSQL connection was dropped without close(); it is closed now")
            let handle = self.handle
            runtime.closeAfterForgetting(fd: fd) { handle.finish() }
        }
    }

    /// Closes the connection from synchronous code: the runtime forgets its socket, then libpq closes it.
    /// A call still running closes it when it ends.
    func closeDropped() {
        guard machine.withLock({ $0.close() }) == .closeNow else { return }
        let fd = watchedSocket.exchange(-1, ordering: .acquiringAndReleasing)
        let handle = self.handle
        guard fd >= 0 else { return handle.finish() }
        runtime.closeAfterForgetting(fd: fd) { handle.finish() }
    }

    /// Drops the socket's registration and closes the connection. Not interrupted by cancellation. A call
    /// running on another task meanwhile closes it when it ends.
    func close() async {
        guard machine.withLock({ $0.close() }) == .closeNow else { return }
        await forgetSocket()
        handle.finish()
    }
}
