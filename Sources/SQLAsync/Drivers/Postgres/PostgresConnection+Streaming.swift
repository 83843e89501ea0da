import CLibPQ
import Runtime

// Streams: a statement sent in single-row mode, its rows read as they are asked for, the connection held by
// the stream until it is closed.

extension PostgresConnection {
    /// Sends `sql` in single-row mode and keeps the connection for the stream until ``closeStream()``.
    func openStream(_ sql: String, _ binds: [SQLValue]) async throws {
        try Runtime.checkCancellation()  // nothing is sent from cancelled code
        try acquire(.stream, sql)
        do {
            try checkIdentifiers(sql)
            guard try handle.sendQuery(sql, binds) else { throw await failure(sql: sql) }
            guard handle.setSingleRowMode() else { throw await failure(sql: sql) }
            try await flush(sql: sql)
        } catch {
            await closeStream()
            throw error
        }
    }

    /// Up to `limit` more rows of the stream; `nil` after the last. Reads from the socket only as rows are
    /// asked for, so the server is held back (TCP flow control) instead of memory growing.
    func nextRows(limit: Int, sql: String) async throws -> RawRows? {
        var rows = RawRows()
        var serverError: SQLError?
        return try await cleaningUp {
            while rows.rowCount < limit {
                // Rows in hand go out first: waiting for more would hold them back.
                if handle.isBusy, !rows.isEmpty, serverError == nil { return rows }
                guard let result = try await nextResult(sql: sql) else {
                    if handle.status != CONNECTION_OK { throw await failure(sql: sql) }
                    if let serverError { throw serverError }
                    return rows.isEmpty ? nil : rows
                }
                defer { PQclear(result) }
                switch PQresultStatus(result) {
                case PGRES_SINGLE_TUPLE:
                    PGHandle.decode(result, appendingTo: &rows)
                case PGRES_TUPLES_OK, PGRES_COMMAND_OK:
                    break  // the end: zero rows; NULL follows
                case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
                    let refusal = try await refuseCopy(PQresultStatus(result), sql: sql)
                    serverError = serverError ?? refusal
                default:
                    serverError = serverError ?? PGHandle.error(from: result, sql: sql)
                }
            }
            return rows
        }
    }

    /// Ends the stream: when rows are left, cancels the query and drains (shielded, with a deadline). The
    /// connection is then free again.
    func closeStream() async {
        await cleanUp()
        await release()
    }
}
