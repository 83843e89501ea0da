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
/// ``SQLError/Kind/misuse`` error, not a corrupted protocol stream.
///
/// Cancellation: nothing is sent from cancelled code. Once a statement is on its way, a cancellation sends a
/// cancel request (`PQcancel`, on a worker thread, since libpq 15 has no non-blocking cancel) and the call
/// keeps reading, shielded, within a short deadline of its own: it throws `CancellationError` when the server
/// cancelled the statement and returns the result when it finished anyway, so the connection is clean when
/// the call returns; if that fails the connection is marked broken and must be discarded.
final class PostgresConnection: Sendable {
    let runtime: Runtime
    let handle: PGHandle
    /// The engine's logger: a connection given up says why (never with values).
    let logger: Logger?
    /// Who uses the connection: 0 nobody, 1 a call (or an open stream), 2 a call, and a close is waiting for
    /// it to end, 3 closed. libpq's connection is touched only by the call holding it (1 or 2) or by the close
    /// (3): a close that meets a call hands the closing over to it, so `PQfinish` never runs under a call.
    private let use = Atomic<UInt8>(0)
    let brokenFlag = Atomic<Bool>(false)
    /// Why the connection was given up (the first reason), for the error every later call throws.
    private let brokenReason = Mutex<String?>(nil)
    /// The socket the runtime watches. libpq closes its socket by itself when the connection is lost, so
    /// this is kept to `forget` it on every failure (a stale registration would hang the next user of the
    /// fd number).
    let watchedSocket = Atomic<Int32>(-1)
    /// Statements this connection prepared, by SQL text and parameter types.
    private let statements = Mutex(StatementCache())
    /// A cancellation that landed during the current call, once the statement was on its way: see
    /// ``waitOnSocket(for:sql:canCancelServer:)``. Reset as each call takes the connection.
    let lateCancel = Mutex(LateCancel())

    struct LateCancel: Sendable {
        /// The shielded wait's deadline, set by the first cancellation seen in the call.
        var deadline: RuntimeInstant?
        /// Whether the server was asked to cancel the statement.
        var requested = false
    }

    /// How long the clean-up after a cancellation may take before the connection is given up.
    /// (The same as a rollback's: on a loaded machine a cancel request, which forks a server process, and the
    /// drain behind it can take more than a second or two.)
    static let cleanUpDeadline: Duration = .seconds(5)

    private init(runtime: Runtime, handle: PGHandle, logger: Logger?) {
        self.runtime = runtime
        self.handle = handle
        self.logger = logger
    }

    /// Whether the server says the session is idle outside any transaction: the only state a pooled
    /// connection may be reused in.
    var isIdleOutsideTransaction: Bool { handle.isIdleOutsideTransaction }

    /// Whether an error aborted the session's transaction: a COMMIT now would roll back, silently.
    var isInFailedTransaction: Bool { handle.isInFailedTransaction }

    /// Whether the server had a transaction open (or failed) after the last call: libpq's transaction status,
    /// recorded as each call gives the connection back (reading libpq meanwhile could race with a call).
    var isInTransaction: Bool { inTransaction.load(ordering: .acquiring) }
    private let inTransaction = Atomic<Bool>(false)

    /// Whether a failed clean-up or a lost server left this connection unusable.
    /// (Set by the calls that met the failure: reading libpq's status here could race with a call.)
    var isBroken: Bool { brokenFlag.load(ordering: .acquiring) || use.load(ordering: .acquiring) == 3 }

    /// Whether the connection can go back to a pool: no call or stream holds it (checked by taking it for
    /// the moment of the check, so that none can start meanwhile), not broken, and the session idle outside
    /// any transaction.
    func isReusable() async -> Bool {
        guard !brokenFlag.load(ordering: .acquiring),
            use.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged
        else { return false }
        let idle = handle.isIdleOutsideTransaction
        await release()
        return idle && !isBroken
    }

    // MARK: Connecting

    /// Connects to `url` on the current runtime.
    static func connect(_ url: DatabaseURL, logger: Logger? = nil) async throws -> PostgresConnection {
        let runtime = try Runtime.current
        var parameters = url.libpqParameters()
        // Name resolution would block inside PQconnectStart: resolve on a worker thread and pass hostaddr.
        if let host = url.host, !host.hasPrefix("/"), !parameters.contains(where: { $0.key == "hostaddr" }) {
            let addresses = try await runtime.runBlocking { () throws -> [String] in try resolve(host) }
            // Every address, tried in order by libpq (IPv6 `::1` first for localhost, say, then 127.0.0.1); the
            // host name repeated beside each for TLS verification and error messages.
            parameters.removeAll { $0.key == "host" }
            parameters.append(("host", Array(repeating: host, count: addresses.count).joined(separator: ",")))
            parameters.append(("hostaddr", addresses.joined(separator: ",")))
        }
        let handle = try PGHandle.start(parameters)
        let connection = PostgresConnection(runtime: runtime, handle: handle, logger: logger)
        // libpq applies connect_timeout only to its blocking connect: enforce it here.
        let timeout = url.parameters.last { $0.key == "connect_timeout" }.flatMap { Int($0.value) }.flatMap { $0 > 0 ? $0 : nil }
        do {
            if let timeout {
                try await fail(at: runtime.now.advanced(by: .seconds(timeout))) { try await connection.finishConnecting() }
            } else {
                try await connection.finishConnecting()
            }
        } catch is TimeoutError {
            await connection.close()
            throw SQLError(.timeout, "connecting took longer than connect_timeout (\(timeout ?? 0) s)")
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    private func finishConnecting() async throws {
        var status = PGRES_POLLING_WRITING
        while true {
            let fd = handle.socket
            switch status {
            case PGRES_POLLING_OK:
                guard handle.setNonBlocking() else { throw handle.connectionError("cannot enter non-blocking mode") }
                handle.silenceNotices()
                watchedSocket.store(handle.socket, ordering: .releasing)
                return
            case PGRES_POLLING_FAILED:
                throw handle.connectionError("cannot connect")
            default:
                // Recorded before the wait, so that a cancelled connect forgets it in `close()` before
                // PQfinish closes the socket (a registration outliving its fd hangs the next socket that
                // gets the same number).
                watchedSocket.store(fd, ordering: .releasing)
                try await runtime.wait(fd: fd, for: status == PGRES_POLLING_READING ? .read : .write)
            }
            // PQconnectPoll may close the socket and open a new one with the same number (SSL or GSS
            // fallback, another host): drop the registration after every step (FINDINGS Q6, pitfall 1).
            await forgetSocket()
            status = handle.connectPoll()
        }
    }

    // MARK: Queries

    /// Sends `sql` with `binds` (`$1`, `$2`, … placeholders) and returns every row of its result.
    func execute(_ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        let key = StatementCache.key(sql, binds)
        return try await exclusively(sql) {
          try await cleaningUp {
            // COPY cannot run in pipeline mode (where statements are prepared): sent as it is, and refused.
            if Self.isCopy(sql) {
                guard try handle.sendQuery(sql, binds) else { throw await failure(sql: sql) }
                try await flush(sql: sql)
                return try await collect(sql: sql)
            }
            if let entry = statements.withLock({ $0.lookUp(key) }) {
                do {
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
        try await exclusively(script) {
            try await cleaningUp {
                guard handle.sendSimpleQuery(script) else { throw await failure(sql: script) }
                try await flush(sql: script)
                _ = try await collect(sql: script)
            }
        }
    }

    /// The names of the statements the session has prepared (one unprepared round trip).
    private func preparedStatementNames() async throws -> Set<String> {
        let sql = "SELECT name FROM pg_prepared_statements"
        guard try handle.sendQuery(sql, []) else { throw await failure(sql: sql) }
        try await flush(sql: sql)
        let rows = try await collect(sql: sql)
        return Set((0..<rows.rowCount).compactMap { if case .text(let name)? = rows.row($0)[0] { name } else { nil } })
    }

    /// Whether `sql` is a COPY statement (leading blanks aside).
    static func isCopy(_ sql: String) -> Bool {
        let start = sql.utf8.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        return start.prefix(4).map { $0 & 0xDF } == Array("COPY".utf8)
    }

    /// Takes the connection for one call: one task at a time, and never once broken or closed.
    func acquire(_ sql: String) throws(SQLError) {
        guard !brokenFlag.load(ordering: .acquiring) else {
            let reason = brokenReason.withLock { $0 }.map { " (\($0))" } ?? ""
            throw SQLError(.connection, "the connection is broken\(reason); discard it", sql: sql)
        }
        let (taken, state) = use.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing)
        guard taken else {
            if state == 3 { throw SQLError(.connection, "the connection is closed", sql: sql) }
            throw SQLError(.misuse, "a PostgreSQL connection serves one task at a time", sql: sql)
        }
    }

    /// Gives the connection back after a call; closes it when a close came meanwhile.
    func release() async {
        let status = handle.transactionStatus
        inTransaction.store(status == PQTRANS_INTRANS || status == PQTRANS_INERROR, ordering: .releasing)
        guard !use.compareExchange(expected: 1, desired: 0, ordering: .acquiringAndReleasing).exchanged else { return }
        use.store(3, ordering: .releasing)  // it was 2: the close is ours
        await forgetSocket()
        handle.finish()
    }

    /// Runs `body` holding the connection. Nothing is sent from code that is cancelled already: the call
    /// throws `CancellationError` and has no effect.
    func exclusively<T>(_ sql: String, _ body: () async throws -> T) async throws -> T {
        try Runtime.checkCancellation()
        try acquire(sql)
        lateCancel.withLock { $0 = LateCancel() }
        do {
            let result = try await body()
            await release()
            return result
        } catch {
            await release()
            throw error
        }
    }

    /// Runs one exchange with the server: a cancellation cleans the connection up (cancel request and
    /// drain), a connection error marks it broken.
    func cleaningUp<T>(_ exchange: () async throws -> T) async throws -> T {
        do {
            return try await exchange()
        } catch let error as CancellationError {
            await cleanUpAfterCancellation()
            throw error
        } catch let error as SQLError where error.kind == .connection {
            markBroken(error.message)
            throw error
        }
    }

    /// Runs a statement this connection prepared earlier: no parsing or planning on the server.
    private func runPrepared(_ entry: StatementCache.Entry, _ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        guard try handle.sendQueryPrepared(entry.name, binds, sql: sql, binaryResults: entry.binaryResults) else {
            throw await failure(sql: sql)
        }
        try await flush(sql: sql)
        return try await collect(sql: sql)
    }

    /// Prepares `sql` under a new name and runs it, in one pipelined round trip (deallocating the statement
    /// the cache evicts in the same trip).
    private func prepareAndRun(_ key: String, _ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        // Checked before anything is sent, like every bind.
        _ = try PGHandle.Parameters(binds, sql: sql)
        // DEALLOCATEs wait for a moment outside any transaction: in a failed one they would be refused, and
        // would take the statement they travel with (a ROLLBACK, say) down with them.
        let idle = handle.isIdleOutsideTransaction
        let (name, deallocations) = statements.withLock { $0.insert(key, deallocating: idle) }
        // Until the server confirms the PREPARE, the name stays out of the cache.
        var prepared = false
        // Whether the server's answer to the PREPARE was read; if not (a cancellation, a lost connection),
        // it may exist there, and is deallocated later.
        var answered = false
        defer { if !prepared { statements.withLock { $0.remove(key, deallocate: !answered) } } }
        guard handle.enterPipelineMode() else { throw await failure(sql: sql) }
        for old in deallocations {
            guard try handle.sendQuery("DEALLOCATE \(old)", []) else { throw await failure(sql: sql) }
        }
        // A sync of their own: a failed DEALLOCATE then cannot abort the statement, and the statement runs
        // as the only command of its implicit transaction (VACUUM or DISCARD ALL refuse to share one).
        if !deallocations.isEmpty, !handle.pipelineSync() { throw await failure(sql: sql) }
        // PREPARE, DESCRIBE (for the result types: binary results pay from the second run on), EXECUTE.
        let commands = deallocations.count + 3
        guard handle.sendPrepare(name, sql, types: binds.map(PGHandle.typeOID)), handle.sendDescribePrepared(name),
            try handle.sendQueryPrepared(name, binds, sql: sql), handle.pipelineSync()
        else { throw await failure(sql: sql) }
        let outcome: PipelineOutcome
        do {
            try await flush(sql: sql)
            outcome = try await collectPipeline(
                expected: commands, syncs: deallocations.isEmpty ? 1 : 2, sql: sql, describing: commands - 2)
            answered = true
        } catch let error as CancellationError {
            await cleanUpPipeline(synced: true)
            throw error
        }
        // The PREPARE is the third to last command.
        let failedStatement = outcome.errors.keys.contains { $0 >= deallocations.count }
        prepared = !outcome.failed(commands - 3)
        if prepared, let types = outcome.describedTypes, !types.isEmpty, types.allSatisfy(PGHandle.binaryDecodable) {
            statements.withLock { $0.useBinaryResults(key) }
        }
        if outcome.errors.keys.contains(where: { $0 < deallocations.count }) {
            // A DEALLOCATE failed: the server no longer had that statement (DISCARD ALL, or a PREPARE that
            // never arrived), and the ones after it were skipped. Learn which statements the server has.
            // The statement's own result is in hand (it may have committed): a failed resync must not lose it.
            do {
                let existing = try await preparedStatementNames()
                statements.withLock { $0.keepOnly(existing, pending: deallocations) }
            } catch {
                if error is CancellationError { await cleanUpAfterCancellation() }
                statements.withLock { $0.removeAll() }
            }
        }
        if statementFailedAfterCancellation(failedStatement) { throw CancellationError() }
        if failedStatement, let error = outcome.lastError { throw error }
        return outcome.rows
    }

    /// Pushes the query out; while libpq's buffer is full, waits for write readiness, and reads meanwhile so
    /// that a server blocked writing to us cannot deadlock the exchange (FINDINGS Q6, pitfall 4).
    /// Pushes out what libpq has queued. `whileSending`: more of the statement is still to be queued, so a
    /// cancellation stops here (nothing complete has reached the server); otherwise it is absorbed like any
    /// wait of a statement on its way (``waitOnSocket(for:sql:canCancelServer:)``).
    func flush(sql: String, whileSending: Bool = false) async throws {
        while true {
            switch handle.flush() {
            case 0: return
            case 1:
                let ready = whileSending
                    ? try await runtime.wait(fd: try await liveSocket(sql: sql), for: [.read, .write])
                    : try await waitOnSocket(for: [.read, .write], sql: sql, canCancelServer: false)
                if ready.contains(.read), !handle.consumeInput() { throw await failure(sql: sql) }
            default: throw await failure(sql: sql)
            }
        }
    }

    /// Reads results until libpq has none left; returns the rows of the last one with tuples or the command
    /// counts, or throws the server's error.
    private func collect(sql: String) async throws -> RawRows {
        var rows = RawRows()
        var serverError: SQLError?
        while true {
            while handle.isBusy {
                try await waitOnSocket(for: .read, sql: sql, canCancelServer: true)
                guard handle.consumeInput() else { throw await failure(sql: sql) }
            }
            guard let result = handle.nextResult() else { break }
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

    /// Ends a COPY the statement started (the protocol would otherwise wait for data forever) and returns the
    /// error to report: COPY FROM STDIN is ended with a failure the server turns into an error; the data of
    /// COPY TO STDOUT is read and dropped.
    func refuseCopy(_ status: ExecStatusType, sql: String) async throws -> SQLError {
        let refusal = SQLError(.misuse, "COPY … FROM STDIN / TO STDOUT is not supported; use executeMany or stream", sql: sql)
        switch status {
        case PGRES_COPY_IN:
            guard handle.putCopyEnd(failing: "COPY FROM STDIN is not supported by SQLAsync") else { throw await failure(sql: sql) }
            try await flush(sql: sql)
        case PGRES_COPY_OUT:
            while true {
                switch handle.dropCopyData() {
                case .more: continue
                case .wouldBlock:
                    try await runtime.wait(fd: try await liveSocket(sql: sql), for: .read)
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

    /// The socket to wait on, or the connection error when libpq has lost (and closed) it — then the
    /// registration is dropped at once, before another task can reuse the fd number.
    func liveSocket(sql: String) async throws -> Int32 {
        let fd = handle.socket
        guard handle.status == CONNECTION_OK, fd >= 0, fd == watchedSocket.load(ordering: .acquiring) else {
            throw await failure(sql: sql)
        }
        return fd
    }

    /// Marks the connection broken, keeping the first reason for later errors.
    func markBroken(_ reason: String) {
        brokenReason.withLock { if $0 == nil { $0 = reason } }
        brokenFlag.store(true, ordering: .releasing)
    }

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
        // Dropped without close() while its runtime still runs (once it has ended, its registrations are gone
        // and PGHandle's deinit closes the connection): the runtime may still watch the socket, and closing it
        // now would leave a registration that hangs the next socket given the same number. Leaked instead (a
        // bug of the caller, said in the log).
        if watchedSocket.load(ordering: .acquiring) >= 0, !runtime.backend.diagnostics().isClosed {
            logger?.warning("a PostgreSQL connection was dropped without close(); its socket is left open")
            handle.abandon()
        }
    }

    /// Drops the socket's registration and closes the connection. Not interrupted by cancellation. A call
    /// running on another task meanwhile closes it when it ends.
    func close() async {
        while true {
            let (closedNow, state) = use.compareExchange(expected: 0, desired: 3, ordering: .acquiringAndReleasing)
            if closedNow {
                await forgetSocket()
                handle.finish()
                return
            }
            guard state == 1 else { return }  // already closed, or its close already handed over
            if use.compareExchange(expected: 1, desired: 2, ordering: .acquiringAndReleasing).exchanged {
                markBroken("closed while a call was running")
                return
            }
        }
    }
}

/// Resolves `host` to a numeric address (blocking: call on a worker thread).
private func resolve(_ host: String) throws -> [String] {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    let rc = getaddrinfo(host, nil, &hints, &list)
    guard rc == 0, list != nil else {
        throw SQLError(.connection, "cannot resolve host '\(host)': \(String(cString: gai_strerror(rc)))")
    }
    defer { freeaddrinfo(list) }
    var addresses: [String] = []
    var entry = list
    while let current = entry {
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        if getnameinfo(current.pointee.ai_addr, current.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
            let address = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !addresses.contains(address) { addresses.append(address) }
        }
        entry = current.pointee.ai_next
    }
    guard !addresses.isEmpty else { throw SQLError(.connection, "cannot format the addresses of host '\(host)'") }
    return addresses
}
