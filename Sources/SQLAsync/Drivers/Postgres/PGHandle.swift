import CLibPQ

#if canImport(Glibc)
import Glibc
#endif

/// The `PGconn*` of one connection.
///
/// `@unchecked Sendable`: libpq connections are not thread-safe. ``PostgresConnection`` touches this one only
/// from the call that holds its `use` state (one call or stream at a time: a second is refused with a misuse
/// error) or, once no call holds it, from `close()`, which moves the state to closed first; a close that meets
/// a call hands the `PQfinish` over to that call. A call may move between threads only across awaits, which
/// order the accesses. `cancelObject()` hands out a `PGcancel`, which libpq documents as safe to use from
/// another thread.
final class PGHandle: @unchecked Sendable {
    private var connection: OpaquePointer?

    private init(_ connection: OpaquePointer) { self.connection = connection }

    /// Starts a non-blocking connection attempt.
    static func start(_ parameters: [(key: String, value: String)]) throws(SQLError) -> PGHandle {
        let keys = parameters.map { strdup($0.key) } + [nil]
        let values = parameters.map { strdup($0.value) } + [nil]
        defer {
            for pointer in keys { free(pointer) }
            for pointer in values { free(pointer) }
        }
        let connection = keys.map { UnsafePointer($0) }.withUnsafeBufferPointer { keyBuffer in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { valueBuffer in
                PQconnectStartParams(keyBuffer.baseAddress, valueBuffer.baseAddress, 0)
            }
        }
        guard let connection else { throw SQLError(.connection, "libpq could not allocate a connection") }
        let handle = PGHandle(connection)
        guard PQstatus(connection) != CONNECTION_BAD else {
            throw handle.connectionError("cannot start connecting")
        }
        return handle
    }

    var socket: Int32 { connection.map { PQsocket($0) } ?? -1 }
    var status: ConnStatusType { connection.map { PQstatus($0) } ?? CONNECTION_BAD }
    var isBusy: Bool { connection.map { PQisBusy($0) != 0 } ?? false }
    /// libpq's view of the session's transaction status after the last ReadyForQuery.
    var transactionStatus: PGTransactionStatusType { connection.map { PQtransactionStatus($0) } ?? PQTRANS_UNKNOWN }
    /// Whether the server session is idle outside any transaction (libpq's view of the last ReadyForQuery).
    var isIdleOutsideTransaction: Bool { connection.map { PQtransactionStatus($0) == PQTRANS_IDLE } ?? false }

    /// Whether the session is in a transaction that an error aborted (only a rollback can follow).
    var isInFailedTransaction: Bool { connection.map { PQtransactionStatus($0) == PQTRANS_INERROR } ?? false }

    /// Whether a query was sent whose results were not all read (libpq's transaction status says so).
    var hasPendingResults: Bool { connection.map { PQtransactionStatus($0) == PQTRANS_ACTIVE } ?? false }

    /// Whether OpenSSL holds decrypted bytes of this connection that libpq has not read yet. libpq reads into
    /// the room its buffer has (at least 8 KiB); a server that writes 16 KiB TLS records (many do; PostgreSQL
    /// 15 itself writes 8 KiB) can leave the rest of a record inside OpenSSL, where the socket's readiness does
    /// not show it: a wait on the socket then waits for data already here, until more comes — which, at the
    /// end of an answer, is never. libpq's own blocking waits check this first; the driver's waits go through
    /// the runtime, so they check it here.
    var hasPendingTLSData: Bool {
        guard let connection, let ssl = PQsslStruct(connection, "OpenSSL"), let pending = Self.sslPending else { return false }
        return pending(ssl) > 0
    }

    /// Whether the connection is encrypted with TLS.
    var usesTLS: Bool { connection.map { PQsslInUse($0) == 1 } ?? false }

    /// Whether ``hasPendingTLSData`` can see OpenSSL's buffer (false: libpq's OpenSSL was not found).
    static var canSeePendingTLSData: Bool { sslPending != nil }

    /// OpenSSL's `SSL_pending`, from the OpenSSL libpq itself links: looked up through the handle of the libpq
    /// already loaded (a lookup there searches libpq and what it depends on), not linked, so that a libpq
    /// without TLS needs none and a process with two OpenSSLs asks the one that holds libpq's connections.
    private static let sslPending: (@convention(c) (UnsafeMutableRawPointer?) -> Int32)? = {
        for name in ["libpq.so.5", "libpq.5.dylib"] {
            guard let library = dlopen(name, RTLD_NOLOAD | RTLD_LAZY) else { continue }
            guard let symbol = dlsym(library, "SSL_pending") else { return nil }
            return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutableRawPointer?) -> Int32).self)
        }
        return nil
    }()

    func connectPoll() -> PostgresPollingStatusType {
        connection.map { PQconnectPoll($0) } ?? PGRES_POLLING_FAILED
    }

    /// Drops the server's notices (libpq would print them to stderr; a library must not, and a notice can
    /// quote data).
    func silenceNotices() {
        if let connection { _ = PQsetNoticeProcessor(connection, { _, _ in }, nil) }
    }

    func setNonBlocking() -> Bool { connection.map { PQsetnonblocking($0, 1) == 0 } ?? false }
    func flush() -> Int32 { connection.map { PQflush($0) } ?? -1 }
    func consumeInput() -> Bool { connection.map { PQconsumeInput($0) != 0 } ?? false }
    func nextResult() -> OpaquePointer? { connection.flatMap { PQgetResult($0) } }

    /// Sends a parameterized query. Values go as text (bytes as binary `bytea`); the server infers types.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for text containing NUL bytes, which PostgreSQL cannot store (rather
    ///   than silently cutting it short).
    func sendQuery(_ sql: String, _ binds: [SQLValue]) throws(SQLError) -> Bool {
        guard let connection else { return false }
        let parameters = try Parameters(binds, sql: sql)
        return parameters.withPointers { values in
            PQsendQueryParams(
                connection, sql, Int32(binds.count), parameters.types, values, parameters.lengths, parameters.formats, 0) == 1
        }
    }

    /// Sends `sql` with its text, as the unnamed statement, for one execution (Parse, Bind, Describe,
    /// Execute, Sync): what a connection behind a pooler in transaction mode does instead of running a named
    /// statement. Integers go with `parameterTypes` (the server's description, checked first) when known.
    func sendQueryParams(
        _ sql: String, _ binds: [SQLValue], parameterTypes: [Oid]?, binaryResults: Bool
    ) throws(SQLError) -> Bool {
        guard let connection else { return false }
        if let parameterTypes { try Self.checkIntegers(binds, against: parameterTypes, sql: sql) }
        var parameters = try Parameters(binds, sql: sql)
        if let parameterTypes {
            for (index, value) in binds.enumerated() where index < parameterTypes.count {
                if case .integer = value { parameters.types[index] = parameterTypes[index] }
            }
        }
        return parameters.withPointers { values in
            PQsendQueryParams(
                connection, sql, Int32(binds.count), parameters.types, values, parameters.lengths, parameters.formats,
                binaryResults ? 1 : 0) == 1
        }
    }

    /// The backend process ID the startup handshake gave (a pooler's own number behind a pooler).
    var backendPID: Int32 { connection.map { PQbackendPID($0) } ?? 0 }

    /// A setting the server reported (`DateStyle`, `IntervalStyle`, `server_version`…), or nil.
    func parameterStatus(_ name: String) -> String? {
        guard let connection, let value = PQparameterStatus(connection, name) else { return nil }
        return String(cString: value)
    }

    /// Sends `script` through the simple query protocol, which runs several statements separated by `;`
    /// (in one implicit transaction unless the script has its own BEGIN / COMMIT).
    func sendSimpleQuery(_ script: String) -> Bool {
        guard let connection else { return false }
        return PQsendQuery(connection, script) == 1
    }

    /// Sends a statement to prepare under `name` with the parameter types of `types` (0: inferred).
    func sendPrepare(_ name: String, _ sql: String, types: [Oid]) -> Bool {
        guard let connection else { return false }
        return PQsendPrepare(connection, name, sql, Int32(types.count), types) == 1
    }

    /// Sends the execution of the prepared statement `name` with `binds`.
    ///
    /// - Parameter binaryResults: ask for every result column in binary format (see ``binaryDecodable(_:)``).
    /// - Parameter parameterTypes: the types the server gave the statement's parameters, when known: integers
    ///   are checked against them before anything is sent.
    func sendQueryPrepared(
        _ name: String, _ binds: [SQLValue], sql: String, binaryResults: Bool = false, parameterTypes: [Oid]? = nil
    ) throws(SQLError) -> Bool {
        guard let connection else { return false }
        if let parameterTypes { try Self.checkIntegers(binds, against: parameterTypes, sql: sql) }
        let parameters = try Parameters(binds, sql: sql)
        return parameters.withPointers { values in
            PQsendQueryPrepared(
                connection, name, Int32(binds.count), values, parameters.lengths, parameters.formats, binaryResults ? 1 : 0) == 1
        }
    }

    /// Sends a request to describe the prepared statement `name` (its parameter and result column types).
    func sendDescribePrepared(_ name: String) -> Bool {
        guard let connection else { return false }
        return PQsendDescribePrepared(connection, name) == 1
    }

    /// Whether a column of type `type` decodes from binary format to the same value as from text. Integers,
    /// floats, booleans and `bytea` then skip text parsing (and hex, for `bytea`); text types are the same
    /// bytes either way. Everything else (numeric, timestamps, JSON…) stays text, and so does a statement
    /// with any such column.
    static func binaryDecodable(_ type: Oid) -> Bool {
        switch type {
        case 16, 17, 20, 21, 23, 26, 700, 701, 25, 1043, 1042, 19: true
        default: false
        }
    }

    /// Ends a COPY FROM STDIN with an error message.
    func putCopyEnd(failing message: String) -> Bool { connection.map { PQputCopyEnd($0, message) == 1 } ?? false }

    /// Queues COPY data: 1 queued, 0 libpq's buffer is full (wait until the socket is writable), -1 failed.
    func putCopyData(_ bytes: UnsafeRawBufferPointer) -> Int32 {
        guard let connection else { return -1 }
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return 1 }
        return PQputCopyData(connection, base.assumingMemoryBound(to: CChar.self), Int32(clamping: bytes.count))
    }

    /// Queues the end of COPY FROM STDIN data, or its failure with `message` (the server then undoes the
    /// COPY): 1 queued, 0 libpq's buffer is full (wait until the socket is writable), -1 failed.
    func putCopyEnd(_ message: String?) -> Int32 {
        guard let connection else { return -1 }
        return PQputCopyEnd(connection, message)
    }

    enum CopyRead { case more, wouldBlock, done, failed }

    /// Reads one message of COPY TO STDOUT data, without blocking, onto `data`.
    func readCopyData(appendingTo data: inout [UInt8]) -> CopyRead {
        guard let connection else { return .failed }
        var buffer: UnsafeMutablePointer<CChar>?
        let count = PQgetCopyData(connection, &buffer, 1)
        if let buffer {
            defer { PQfreemem(buffer) }
            if count > 0 { data.append(contentsOf: UnsafeRawBufferPointer(start: buffer, count: Int(count))) }
        }
        switch count {
        case let n where n > 0: return .more
        case 0: return .wouldBlock
        case -1: return .done
        default: return .failed
        }
    }

    /// Reads one row of COPY TO STDOUT data, without blocking, and drops it.
    func dropCopyData() -> CopyRead {
        guard let connection else { return .failed }
        var buffer: UnsafeMutablePointer<CChar>?
        let count = PQgetCopyData(connection, &buffer, 1)
        if let buffer { PQfreemem(buffer) }
        switch count {
        case let n where n > 0: return .more
        case 0: return .wouldBlock
        case -1: return .done
        default: return .failed
        }
    }

    /// Asks for the rows of the query just sent one result at a time (streaming).
    func setSingleRowMode() -> Bool { connection.map { PQsetSingleRowMode($0) == 1 } ?? false }

    func enterPipelineMode() -> Bool { connection.map { PQenterPipelineMode($0) == 1 } ?? false }
    func exitPipelineMode() -> Bool { connection.map { PQexitPipelineMode($0) == 1 } ?? false }
    func pipelineSync() -> Bool { connection.map { PQpipelineSync($0) == 1 } ?? false }
    var isInPipelineMode: Bool { connection.map { PQpipelineStatus($0) != PQ_PIPELINE_OFF } ?? false }

    /// A cancel request object for the running query (nil when there is no connection).
    func cancelObject() -> PGCancelRequest? {
        connection.flatMap { PQgetCancel($0) }.map(PGCancelRequest.init)
    }

    /// Whether plain string literals take backslash escapes: the server's `standard_conforming_strings` is off
    /// (libpq keeps the setting as the server reports it, also after a `SET`).
    var backslashEscapesInStrings: Bool {
        guard let connection, let value = PQparameterStatus(connection, "standard_conforming_strings") else { return false }
        return String(cString: value) == "off"
    }

    /// The key for sending cancel requests without libpq (nil when libpq's cancel object cannot be read).
    func cancelKey() -> PostgresCancelKey? {
        // The layout read is libpq's from 9.x through 17; libpq 18 changed what follows the process ID
        // (variable-length keys), and there the process ID check alone would pass with a wrong key.
        guard (90_000..<180_000).contains(PQlibVersion()), let connection, let cancel = PQgetCancel(connection) else { return nil }
        defer { PQfreeCancel(cancel) }
        return PostgresCancelKey.read(cancel, backendPID: PQbackendPID(connection))
    }

    /// The notifications libpq has read and not handed out yet.
    func notifications() -> [PostgresNotification] {
        guard let connection else { return [] }
        var found: [PostgresNotification] = []
        while let notify = PQnotifies(connection) {
            found.append(PostgresNotification(
                channel: String(cString: notify.pointee.relname), payload: String(cString: notify.pointee.extra),
                processID: notify.pointee.be_pid))
            PQfreemem(notify)
        }
        return found
    }

    /// Forgets the connection without closing it (see `PostgresConnection.deinit`).
    func abandon() { connection = nil }

    func finish() {
        if let connection { PQfinish(connection) }
        connection = nil
    }

    deinit { finish() }

    // MARK: Errors and rows

    func connectionError(_ what: String, sql: String? = nil) -> SQLError {
        let detail = connection.map { String(cString: PQerrorMessage($0)) } ?? ""
        let message = detail.trimmingTrailingNewlines()
        return SQLError(.connection, message.isEmpty ? what : "\(what): \(message)", sql: sql)
    }

    static func error(from result: OpaquePointer, sql: String) -> SQLError {
        func field(_ code: Int32) -> String? {
            PQresultErrorField(result, code).map { String(cString: $0) }
        }
        let state = field(Int32(UInt8(ascii: "C")))  // PG_DIAG_SQLSTATE
        var message = field(Int32(UInt8(ascii: "M"))) ?? String(cString: PQresultErrorMessage(result)).trimmingTrailingNewlines()
        // Data exceptions quote the offending value (`invalid input syntax for type integer: "…"`), which may
        // be a bound value: keep the sentence, not the value.
        if state?.hasPrefix("22") == true { message = redactingQuoted(message) }
        let kind: SQLError.Kind
        switch state {
        case let code? where code.hasPrefix("23"): kind = .constraint
        case "42601"?: kind = .syntax
        case "40001"?: kind = .serializationFailure
        case "40P01"?: kind = .deadlock
        case "57014"?: kind = .cancelled
        case "55P03"?, "25P03"?: kind = .timeout
        case let code? where code.hasPrefix("08") || code.hasPrefix("57P"): kind = .connection
        default: kind = .database
        }
        return SQLError(kind, message, sqlState: state, sql: sql)
    }

    /// Rows inserted, updated or deleted by the command of `result` (with or without RETURNING); 0 for queries.
    static func rowsAffected(_ result: OpaquePointer) -> Int {
        let status = String(cString: PQcmdStatus(result))
        guard !status.hasPrefix("SELECT"), !status.hasPrefix("FETCH") else { return 0 }
        return Int(String(cString: PQcmdTuples(result))) ?? 0
    }

    /// `text` with the contents of every double-quoted part replaced by `…`.
    static func redactingQuoted(_ text: String) -> String {
        var result = ""
        var quoted = false
        for character in text {
            if character == "\"" {
                if !quoted { result += "\"…" } else { result.append("\"") }
                quoted.toggle()
            } else if !quoted {
                result.append(character)
            }
        }
        return result
    }

}

/// A `PGcancel*`: sends a cancel request for the query running on its connection. Blocking (it opens a new
/// connection and waits, without a time limit, for the server to close it), so it runs on a worker thread of
/// ``PostgresConnection/cancelLimiter``'s — only when ``PostgresCancelKey`` cannot be read.
final class PGCancelRequest: @unchecked Sendable {
    // @unchecked Sendable: libpq documents PGcancel as safe to use from any thread; it is freed once, in deinit.
    private let cancel: OpaquePointer
    init(_ cancel: OpaquePointer) { self.cancel = cancel }
    deinit { PQfreeCancel(cancel) }

    /// Sends the request; returns whether the server got it (the query may have finished anyway).
    func send() -> Bool {
        var buffer = [CChar](repeating: 0, count: 256)
        return PQcancel(cancel, &buffer, Int32(buffer.count)) == 1
    }
}

extension String {
    func trimmingTrailingNewlines() -> String {
        var text = self
        while let last = text.last, last.isNewline || last == " " { text.removeLast() }
        return text
    }
}
