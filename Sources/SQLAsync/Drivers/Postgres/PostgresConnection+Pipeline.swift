import CLibPQ
import Runtime

// Batches in libpq's pipeline mode: every execution sent without waiting, one sync, one round trip; and the
// reading of a pipeline's results, shared with the first run of a statement (PREPARE, DESCRIBE, EXECUTE).

extension PostgresConnection {
    /// Runs `sql` once per parameter set in libpq's pipeline mode: one prepare, every execution sent without
    /// waiting, one sync — a single round trip for the batch. Outside a transaction the batch is atomic (the
    /// server runs a pipeline up to its sync as one implicit transaction); inside one, an error aborts it.
    ///
    /// Returns the rows every execution returned (for `RETURNING`), and the rows affected by all.
    func executeMany(_ sql: String, _ sets: [[SQLValue]]) async throws -> RawRows {
        guard let first = sets.first else { return RawRows() }
        return try await exclusively(.pipeline, sql) { try await executeMany(sql, sets, first: first) }
    }

    private func executeMany(_ sql: String, _ sets: [[SQLValue]], first: [SQLValue]) async throws -> RawRows {
        // One parameter type per position: the first set's, unless a later set has a non-NULL value of another
        // type there; then every execution is sent with its own types (no shared prepared statement).
        var types = first.map(PGHandle.typeOID)
        var uniform = true
        for set in sets.dropFirst() {
            guard set.count == types.count else {
                throw SQLError(.misuse, "every parameter set needs \(types.count) values; one has \(set.count)", sql: sql)
            }
            for (index, value) in set.enumerated() where value != .null {
                let type = PGHandle.typeOID(value)
                if types[index] == 0, case .null = first[index] { types[index] = type } else if types[index] != type { uniform = false }
            }
        }
        // Refused before anything is sent, so that a batch never runs in part.
        try checkIdentifiers(sql)
        for set in sets {
            for (index, value) in set.enumerated() {
                if let refusal = PGHandle.refusal(value, number: index + 1, sql: sql) { throw refusal }
            }
        }
        guard handle.enterPipelineMode() else { throw await failure(sql: sql) }
        var synced = false
        do {
            var expected = sets.count
            if uniform {
                guard handle.sendPrepare("", sql, types: types) else { throw await failure(sql: sql) }
                expected += 1
            }
            for (index, set) in sets.enumerated() {
                let sent = uniform ? try handle.sendQueryPrepared("", set, sql: sql) : try handle.sendQuery(sql, set)
                guard sent else { throw await failure(sql: sql) }
                // Push out what has accumulated now and then, reading meanwhile: memory stays bounded.
                // (A cancellation here stops the batch: it is not fully sent, and closing the connection rolls
                // it back.)
                if index % 256 == 255 { try await flush(sql: sql, whileSending: true) }
            }
            guard handle.pipelineSync() else { throw await failure(sql: sql) }
            try await flush(sql: sql)
            synced = true
            let outcome = try await collectPipeline(expected: expected, sql: sql)
            if statementFailedAfterCancellation(outcome.firstError != nil) { throw CancellationError() }
            if let error = outcome.firstError { throw error }
            return outcome.rows
        } catch let error as SQLError where error.kind == .connection {
            markBroken(error.message)
            throw error
        } catch {
            if synced {
                await cleanUp()
            } else if handle.isInPipelineMode, !isBroken {
                // A sync now would commit the commands already run: closing, which makes the server roll them
                // back, is the only way the batch stays all-or-nothing.
                logger?.info("closing a PostgreSQL connection: a batch failed before it was fully sent (the server rolls it back)")
                markBroken("a batch failed before it was fully sent")
                await forgetSocket()
                handle.finish()
            }
            throw error
        }
    }

    /// What a pipeline returned: the rows of every command, and which commands failed.
    struct PipelineOutcome {
        var rows = RawRows()
        /// The result column types the DESCRIBE command reported.
        var describedTypes: [Oid]?
        /// The parameter types the DESCRIBE command reported.
        var parameterTypes: [Oid]?
        /// Which command was the PREPARE, when there was one.
        var prepareIndex = 0
        /// The errors, by command index (commands skipped after an error are not failures).
        var errors: [Int: SQLError] = [:]
        /// The first command's error.
        var firstError: SQLError? { errors.keys.min().flatMap { errors[$0] } }
        /// The last failing command's error: after a middle sync, the statement's own.
        var lastError: SQLError? { errors.keys.max().flatMap { errors[$0] } }
        func failed(_ command: Int) -> Bool { errors[command] != nil }
    }

    /// Reads the results of `expected` pipelined commands and the sync, then leaves pipeline mode.
    func collectPipeline(expected: Int, syncs: Int = 1, sql: String, describing: Int? = nil) async throws -> PipelineOutcome {
        var outcome = PipelineOutcome()
        var command = 0
        var syncsLeft = syncs
        while true {
            guard let result = try await nextResult(sql: sql) else {
                // The end of one command's results.
                command += 1
                // Past the last command only the sync can come; more ends mean the connection is gone.
                if command > expected + 1 || handle.status != CONNECTION_OK { throw await failure(sql: sql) }
                continue
            }
            defer { PQclear(result) }
            switch PQresultStatus(result) {
            case PGRES_PIPELINE_SYNC:
                syncsLeft -= 1
                guard syncsLeft == 0 else { continue }
                guard handle.exitPipelineMode() else { throw await failure(sql: sql) }
                return outcome
            case PGRES_TUPLES_OK:
                PGHandle.decode(result, appendingTo: &outcome.rows)
                outcome.rows.rowsAffected += PGHandle.rowsAffected(result)
            case PGRES_COMMAND_OK where command == describing:
                outcome.describedTypes = (0..<PQnfields(result)).map { PQftype(result, $0) }
                outcome.parameterTypes = (0..<PQnparams(result)).map { PQparamtype(result, $0) }
            case PGRES_COMMAND_OK:
                outcome.rows.rowsAffected += PGHandle.rowsAffected(result)
            case PGRES_PIPELINE_ABORTED:
                break  // skipped after an earlier error, which is the one reported
            case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
                // libpq cannot leave a COPY inside a pipeline: the connection is given up.
                markBroken("a COPY inside a batch")
                await forgetSocket()
                handle.finish()
                throw SQLError(.misuse, "COPY cannot run in a batch or as a prepared statement; the connection was closed", sql: sql)
            default:
                outcome.errors[command] = PGHandle.error(from: result, sql: sql)
            }
        }
    }
}
