import CLibPQ
import Runtime

// Prepared statements: the first run of a statement prepares it (with the eviction's DEALLOCATEs in the same
// round trip), later runs execute it by name. Integers are bound with the types the server gives their
// parameters, so that `pg_terminate_backend($1)` finds its int4 function and an out-of-range value is refused
// before it is sent.

extension PostgresConnection {
    /// The most parameters a statement is described with (see ``prepareAndRun(_:_:_:)``): libpq 15 takes a
    /// parameter description of at most 30,000 bytes.
    static let describableParameters = 7_000

    /// Runs a statement this connection prepared earlier: no parsing or planning on the server.
    func runPrepared(_ entry: StatementCache.Entry, _ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        guard try handle.sendQueryPrepared(
            entry.name, binds, sql: sql, binaryResults: entry.binaryResults, parameterTypes: entry.parameterTypes)
        else { throw await failure(sql: sql) }
        try await flush(sql: sql)
        return try await collect(sql: sql)
    }

    /// Runs a statement whose description this connection keeps, sending its text again (unnamed mode,
    /// behind a pooler): one round trip, and integers checked against the described types first. Results come
    /// as text: the text is parsed anew each time, so a changed table (or another server connection's
    /// `search_path`) can change a column's type, which binary results would misread — and the server, unlike
    /// with a named statement, has no cached plan to refuse the change with.
    func runUnnamed(_ entry: StatementCache.Entry, _ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        guard try handle.sendQueryParams(sql, binds, parameterTypes: entry.parameterTypes, binaryResults: false)
        else { throw await failure(sql: sql) }
        try await flush(sql: sql)
        return try await collect(sql: sql)
    }

    /// Prepares `sql` under a new name (the unnamed statement in unnamed mode) and runs it. Without integer parameters, in one pipelined round trip
    /// (PREPARE, DESCRIBE, EXECUTE; deallocating the statement the cache evicts in the same trip). With them,
    /// the server first infers their types (PREPARE and DESCRIBE), and the statement runs once the values are
    /// checked against them: one more round trip, on the first run only.
    func prepareAndRun(_ key: String, _ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        // Checked before anything is sent, like every bind; and the identifiers, which the server would
        // truncate (once per statement text: a cached statement was checked when it was prepared).
        _ = try PGHandle.Parameters(binds, sql: sql)
        try checkIdentifiers(sql)
        // libpq 15 refuses a parameter description longer than 30,000 bytes (4 per parameter) as a lost
        // synchronization, so a statement with more parameters is not described: its integers go as int8 and
        // its results as text. (The protocol's own limit, 65,535, is checked with every bind.)
        let describable = binds.count <= Self.describableParameters
        let typed = describable && binds.contains { if case .integer = $0 { true } else { false } }
        // DEALLOCATEs wait for a moment outside any transaction: in a failed one they would be refused, and
        // would take the statement they travel with (a ROLLBACK, say) down with them.
        let status = handle.transactionStatus
        let unnamed = statements.withLock { $0.unnamed }
        var (name, deallocations) = statements.withLock { $0.insert(key, deallocating: status == PQTRANS_IDLE) }
        if unnamed { name = "" }
        let deallocate = deallocations.map { "DEALLOCATE \($0)" }
        // Until the server confirms the PREPARE, the name stays out of the cache.
        var prepared = false
        // Whether the server's answer to the PREPARE was read; if not (a cancellation, a lost connection),
        // it may exist there, and is deallocated later.
        var answered = false
        defer { if !prepared { statements.withLock { $0.remove(key, deallocate: !answered) } } }
        guard typed else {
            let outcome = try await sendPrepare(
                name: name, sql, types: binds.map(PGHandle.typeOID), execute: binds, before: deallocate, describe: describable)
            answered = true
            prepared = !outcome.failed(outcome.prepareIndex)
            if prepared { recordResultFormat(key, outcome) }
            if outcome.errors.keys.contains(where: { $0 < deallocations.count }) { await resynchronizeStatements(pending: deallocations) }
            let failedStatement = outcome.errors.keys.contains { $0 >= outcome.prepareIndex }
            if statementFailedAfterCancellation(failedStatement) { throw CancellationError() }
            if failedStatement, let error = outcome.lastError { throw error }
            return outcome.rows
        }

        // Integers are left for the server to type from their context. Inside a transaction, behind a
        // savepoint: a PREPARE the server cannot type (`$1 - $2`: which operator?) would otherwise abort it.
        var types = binds.map(PGHandle.inferredTypeOID)
        let savepoint = status == PQTRANS_INTRANS
        var outcome = try await sendPrepare(
            name: name, sql, types: types, execute: nil, before: deallocate, savepoint: savepoint)
        answered = true
        if outcome.errors.keys.contains(where: { $0 < deallocations.count }) { await resynchronizeStatements(pending: deallocations) }
        var retyped: [Int] = []
        if outcome.errors[outcome.prepareIndex] != nil {
            // The server could not make sense of the statement without the integers' types: an ambiguous
            // operator (`$1 - $2`), a type it cannot determine, or a function it then cannot find
            // (`sum(column1)` over `VALUES ($1)`, typed text). Every integer as int8 then, as before; if that
            // fails too, its error is the one reported.
            if statementFailedAfterCancellation(true) { throw CancellationError() }
            retyped = binds.indices.filter { if case .integer = binds[$0] { true } else { false } }
        } else {
            // A parameter the server made text (`SELECT $1`), or another type an integer does not convert to
            // exactly, is prepared as int8 instead: an error then, rather than a silently changed value or type.
            let described = outcome.parameterTypes ?? []
            retyped = binds.indices.filter {
                if case .integer = binds[$0] { $0 < described.count && !PGHandle.acceptsInteger(described[$0]) } else { false }
            }
        }
        if !retyped.isEmpty {
            for index in retyped { types[index] = 20 }
            let undo = outcome.failed(outcome.prepareIndex)
                ? (savepoint ? ["ROLLBACK TO SAVEPOINT anyruntime_prepare", "RELEASE SAVEPOINT anyruntime_prepare"] : [])
                : (unnamed ? [] : ["DEALLOCATE \(name)"])  // a new unnamed statement replaces the old
            answered = false
            outcome = try await sendPrepare(name: name, sql, types: types, execute: nil, before: undo)
            answered = true
            if let error = outcome.firstError {
                if statementFailedAfterCancellation(true) { throw CancellationError() }
                throw error
            }
        }
        prepared = true
        recordResultFormat(key, outcome)
        statements.withLock { $0.setParameterTypes(key, outcome.parameterTypes ?? []) }
        // Nothing has run yet: a cancellation that landed meanwhile stops the call here.
        if machine.withLock({ $0.cancelDeadline }) != nil { throw CancellationError() }
        guard let entry = statements.withLock({ $0.lookUp(key) }) else {
            throw SQLError(.misuse, "the prepared statement left the cache while it ran", sql: sql)
        }
        // Unnamed: the statement goes again with its text — behind a pooler the next round trip may reach
        // another server connection, where the unnamed statement just described does not exist.
        return unnamed ? try await runUnnamed(entry, sql, binds) : try await runPrepared(entry, sql, binds)
    }

    /// Results in binary format from the second run on, when every column's type reads the same that way.
    private func recordResultFormat(_ key: String, _ outcome: PipelineOutcome) {
        if let types = outcome.describedTypes, !types.isEmpty, types.allSatisfy(PGHandle.binaryDecodable) {
            statements.withLock { $0.useBinaryResults(key) }
        }
    }

    /// Sends, in one pipelined round trip: the `before` commands (DEALLOCATEs of evicted statements, say),
    /// with a sync of their own, so that a failed one cannot abort the statement and the statement runs as
    /// the only command of its implicit transaction (as VACUUM or DISCARD ALL want); then — behind a
    /// savepoint when `savepoint` — PREPARE and DESCRIBE (for the parameter and result types: binary results
    /// pay from the second run on); then, given `execute`'s binds, the EXECUTE; and reads every answer.
    private func sendPrepare(
        name: String, _ sql: String, types: [Oid], execute binds: [SQLValue]?, before: [String], savepoint: Bool = false,
        describe: Bool = true
    ) async throws -> PipelineOutcome {
        guard handle.enterPipelineMode() else { throw await failure(sql: sql) }
        for command in before {
            guard try handle.sendQuery(command, []) else { throw await failure(sql: sql) }
        }
        if !before.isEmpty, !handle.pipelineSync() { throw await failure(sql: sql) }
        if savepoint, !(try handle.sendQuery("SAVEPOINT anyruntime_prepare", [])) { throw await failure(sql: sql) }
        guard handle.sendPrepare(name, sql, types: types), !describe || handle.sendDescribePrepared(name) else {
            throw await failure(sql: sql)
        }
        if savepoint, !(try handle.sendQuery("RELEASE SAVEPOINT anyruntime_prepare", [])) { throw await failure(sql: sql) }
        if let binds, !(try handle.sendQueryPrepared(name, binds, sql: sql)) { throw await failure(sql: sql) }
        guard handle.pipelineSync() else { throw await failure(sql: sql) }
        // (A cancellation or failure meanwhile is cleaned up by the caller's cleaningUp { }.)
        try await flush(sql: sql)
        let prepareIndex = before.count + (savepoint ? 1 : 0)
        var outcome = try await collectPipeline(
            expected: prepareIndex + (describe ? 2 : 1) + (savepoint ? 1 : 0) + (binds == nil ? 0 : 1),
            syncs: before.isEmpty ? 1 : 2, sql: sql, describing: describe ? prepareIndex + 1 : nil)
        outcome.prepareIndex = prepareIndex
        return outcome
    }

    /// A DEALLOCATE failed: the server no longer had that statement (DISCARD ALL, or a PREPARE that never
    /// arrived), and the ones after it were skipped. Learn which statements the server has. The statement's
    /// own result is in hand (it may have committed): a failed resync must not lose it.
    private func resynchronizeStatements(pending: [String]) async {
        do {
            let existing = try await preparedStatementNames()
            statements.withLock { $0.keepOnly(existing, pending: pending) }
        } catch {
            if error is CancellationError { await cleanUp() }
            statements.withLock { $0.removeAll() }
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
}
