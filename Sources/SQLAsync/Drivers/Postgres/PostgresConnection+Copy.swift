import CLibPQ
import Runtime

// COPY: not supported yet. A COPY statement is sent as it is (it cannot be prepared) and ended at once, so
// that the protocol never waits for data: the call gets a typed error and the connection goes on.

extension PostgresConnection {
    /// Whether `sql` is a COPY statement (leading blanks aside).
    static func isCopy(_ sql: String) -> Bool {
        let start = sql.utf8.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\t") || $0 == UInt8(ascii: "\r") }
        return start.prefix(4).map { $0 & 0xDF } == Array("COPY".utf8)
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
