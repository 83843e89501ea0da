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

    enum CopyRead { case more, wouldBlock, done, failed }

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

    /// The type PostgreSQL is told for a value (0: let the server infer it from the context).
    static func typeOID(_ value: SQLValue) -> Oid {
        switch value {
        case .null, .text: 0
        case .integer: 20
        case .double: 701
        case .bool: 16
        case .bytes: 17
        }
    }

    /// The type a statement is prepared with for a value, when the server is to describe integer parameters:
    /// integers are left to the server to infer from their context (`pg_terminate_backend($1)` takes an
    /// `int4`, a comparison with an `int2` column an `int2`), everything else as ``typeOID(_:)``.
    static func inferredTypeOID(_ value: SQLValue) -> Oid {
        if case .integer = value { return 0 }
        return typeOID(value)
    }

    /// Whether an integer sent as text to a parameter of type `type` arrives as the same number (or is
    /// refused by ``checkIntegers(_:against:sql:)``): the integer types, `oid`, `numeric` and the floats. A
    /// parameter the server made text (`SELECT $1`) or anything else is prepared as `int8` instead.
    static func acceptsInteger(_ type: Oid) -> Bool {
        switch type {
        case 20, 21, 23, 26, 1700, 700, 701: true
        default: false
        }
    }

    /// Refuses an integer its parameter's type cannot hold exactly, naming the parameter: nothing is sent,
    /// and nothing is silently rounded (a float4 parameter holds integers up to 2^24 exactly, a float8 one up
    /// to 2^53).
    static func checkIntegers(_ binds: [SQLValue], against types: [Oid], sql: String) throws(SQLError) {
        for (index, value) in binds.enumerated() where index < types.count {
            guard case .integer(let integer) = value else { continue }
            let (name, fits): (String, Bool) =
                switch types[index] {
                case 21: ("smallint (int2)", Int16(exactly: integer) != nil)
                case 23: ("integer (int4)", Int32(exactly: integer) != nil)
                case 26: ("oid", UInt32(exactly: integer) != nil)
                case 700: ("real (float4)", integer.magnitude <= 1 << 24)
                case 701: ("double precision (float8)", integer.magnitude <= 1 << 53)
                default: ("", true)
                }
            guard fits else {
                throw SQLError(
                    .invalidParameter,
                    "parameter $\(index + 1) is \(integer), which the parameter's type \(name) cannot hold exactly",
                    sql: sql)
            }
        }
    }

    /// Bound values marshalled for libpq: types, lengths, formats and NUL-terminated copies.
    struct Parameters {
        var types: [Oid] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        var buffers: [[UInt8]?] = []

        init(_ binds: [SQLValue], sql: String) throws(SQLError) {
            // The protocol counts parameters in 16 bits.
            guard binds.count <= 65_535 else {
                throw SQLError(.misuse, "a PostgreSQL statement takes at most 65,535 parameters, not \(binds.count)", sql: sql)
            }
            types.reserveCapacity(binds.count)
            lengths.reserveCapacity(binds.count)
            formats.reserveCapacity(binds.count)
            buffers.reserveCapacity(binds.count)
            for (index, value) in binds.enumerated() {
                types.append(PGHandle.typeOID(value))
                switch value {
                case .null:
                    buffers.append(nil); formats.append(0)
                case .integer(let integer):
                    buffers.append(Array(String(integer).utf8)); formats.append(0)
                case .double(let double):
                    buffers.append(Array(PGHandle.text(double).utf8)); formats.append(0)
                case .bool(let bool):
                    buffers.append(Array((bool ? "true" : "false").utf8)); formats.append(0)
                case .text(let text):
                    if text.utf8.contains(0) {
                        throw SQLError(
                            .misuse, "parameter $\(index + 1) is text with a NUL byte, which PostgreSQL cannot store; bind it as bytes",
                            sql: sql)
                    }
                    buffers.append(Array(text.utf8)); formats.append(0)
                case .bytes(let bytes):
                    buffers.append(bytes); formats.append(1)
                }
                guard let length = Int32(exactly: buffers.last??.count ?? 0) else {
                    throw SQLError(.misuse, "parameter $\(index + 1) is larger than PostgreSQL accepts (2 GiB)", sql: sql)
                }
                lengths.append(length)
            }
        }

        func withPointers<R>(_ body: ([UnsafePointer<CChar>?]) -> R) -> R {
            // NUL-terminated copies that live for the call (libpq reads text-format values as C strings and
            // copies them into its output buffer).
            let copies: [UnsafeMutablePointer<CChar>?] = buffers.map { buffer in
                guard let buffer else { return nil }
                let pointer = UnsafeMutablePointer<CChar>.allocate(capacity: buffer.count + 1)
                buffer.withUnsafeBytes { raw in
                    if let base = raw.baseAddress { UnsafeMutableRawPointer(pointer).copyMemory(from: base, byteCount: raw.count) }
                }
                pointer[buffer.count] = 0
                return pointer
            }
            defer { for pointer in copies { pointer?.deallocate() } }
            return body(copies.map { $0.map { UnsafePointer($0) } })
        }
    }

    /// A double as PostgreSQL reads it back exactly: Swift's shortest round-trip form, plus the specials.
    fileprivate static func text(_ double: Double) -> String {
        if double.isNaN { return "NaN" }
        if double.isInfinite { return double < 0 ? "-Infinity" : "Infinity" }
        return "\(double)"
    }

    /// A cancel request object for the running query (nil when there is no connection).
    func cancelObject() -> PGCancelRequest? {
        connection.flatMap { PQgetCancel($0) }.map(PGCancelRequest.init)
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

    /// The name of a built-in type (`pg_type.typname`); other types (domains, enums, extensions) by their
    /// OID, which `SELECT $1::regtype` names.
    static func typeName(_ oid: Oid) -> String {
        switch oid {
        case 16: "bool"
        case 17: "bytea"
        case 18: "char"
        case 19: "name"
        case 20: "int8"
        case 21: "int2"
        case 23: "int4"
        case 25: "text"
        case 26: "oid"
        case 114: "json"
        case 142: "xml"
        case 700: "float4"
        case 701: "float8"
        case 790: "money"
        case 869: "inet"
        case 650: "cidr"
        case 1042: "bpchar"
        case 1043: "varchar"
        case 1082: "date"
        case 1083: "time"
        case 1114: "timestamp"
        case 1184: "timestamptz"
        case 1186: "interval"
        case 1266: "timetz"
        case 1560: "bit"
        case 1562: "varbit"
        case 1700: "numeric"
        case 2950: "uuid"
        case 3802: "jsonb"
        case 1000: "_bool"
        case 1005: "_int2"
        case 1007: "_int4"
        case 1016: "_int8"
        case 1009: "_text"
        case 1015: "_varchar"
        case 1021: "_float4"
        case 1022: "_float8"
        case 2951: "_uuid"
        default: "oid \(oid)"
        }
    }

    /// Decodes every row of a text-format result by column type.
    static func decode(_ result: OpaquePointer) -> RawRows {
        var rows = RawRows()
        decode(result, appendingTo: &rows)
        return rows
    }

    /// Decodes every row of `result` onto `rows` (a stream's rows arrive one result each); the column names
    /// and types are read from the first result only.
    static func decode(_ result: OpaquePointer, appendingTo rows: inout RawRows) {
        let columnCount = PQnfields(result)
        let rowCount = PQntuples(result)
        if rows.columns.isEmpty, columnCount > 0 {
            rows.columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
            rows.columnTypes = (0..<columnCount).map { typeName(PQftype(result, $0)) }
        }
        rows.values.reserveCapacity(rows.values.count + Int(rowCount) * Int(columnCount))
        // Per column, looked up once for a result of many rows; a single row (a stream's, a point select's)
        // asks libpq directly rather than allocating the tables.
        let types = rowCount > 1 ? (0..<columnCount).map { PQftype(result, $0) } : []
        let binary = rowCount > 1 ? (0..<columnCount).map { PQfformat(result, $0) == 1 } : []
        for row in 0..<rowCount {
            for column in 0..<columnCount {
                if PQgetisnull(result, row, column) != 0 {
                    rows.values.append(.null)
                    continue
                }
                let length = Int(PQgetlength(result, row, column))
                let pointer = PQgetvalue(result, row, column)
                let bytes = UnsafeRawBufferPointer(start: pointer, count: length)
                let type = types.isEmpty ? PQftype(result, column) : types[Int(column)]
                let isBinary = binary.isEmpty ? PQfformat(result, column) == 1 : binary[Int(column)]
                rows.values.append(isBinary ? binaryValue(bytes, type: type) : value(bytes, type: type))
            }
        }
        rows.rowCount += Int(rowCount)
    }

    /// A binary-format value of one of the ``binaryDecodable(_:)`` types (big-endian integers and IEEE floats).
    private static func binaryValue(_ bytes: UnsafeRawBufferPointer, type: Oid) -> SQLValue {
        func integer(_ width: Int) -> Int64? {
            guard bytes.count == width else { return nil }
            var value: UInt64 = 0
            for byte in bytes { value = value << 8 | UInt64(byte) }
            // Sign-extend from `width` bytes.
            let shift = UInt64(64 - width * 8)
            return Int64(bitPattern: value << shift) >> Int64(shift)
        }
        switch type {
        case 20: return integer(8).map(SQLValue.integer) ?? .bytes(Array(bytes))
        case 23: return integer(4).map(SQLValue.integer) ?? .bytes(Array(bytes))
        case 21: return integer(2).map(SQLValue.integer) ?? .bytes(Array(bytes))
        case 26:  // oid: unsigned
            return integer(4).map { .integer($0 & 0xFFFF_FFFF) } ?? .bytes(Array(bytes))
        case 701:
            return integer(8).map { .double(Double(bitPattern: UInt64(bitPattern: $0))) } ?? .bytes(Array(bytes))
        case 700:
            return integer(4).map { .double(Double(Float(bitPattern: UInt32(truncatingIfNeeded: $0)))) } ?? .bytes(Array(bytes))
        case 16: return bytes.count == 1 ? .bool(bytes[0] != 0) : .bytes(Array(bytes))
        case 17: return .bytes(Array(bytes))
        default: return .text(String(decoding: bytes, as: UTF8.self))  // text, varchar, bpchar, name
        }
    }

    private static func value(_ bytes: UnsafeRawBufferPointer, type: Oid) -> SQLValue {
        let text = String(decoding: bytes, as: UTF8.self)
        switch type {
        case 20, 21, 23, 26:  // int8, int2, int4, oid
            return Int64(text).map(SQLValue.integer) ?? .text(text)
        case 700, 701:  // float4, float8
            switch text {
            case "NaN": return .double(.nan)
            case "Infinity": return .double(.infinity)
            case "-Infinity": return .double(-.infinity)
            default:
                // float4 text is the shortest form that reads back as the same float4: parse it as a Float,
                // or "0.1" would become the double nearest 0.1, which no Float holds exactly.
                if type == 700 { return Float(text).map { .double(Double($0)) } ?? .text(text) }
                return Double(text).map(SQLValue.double) ?? .text(text)
            }
        case 16:  // bool
            return .bool(text == "t")
        case 17:  // bytea, hex format: \x0aff…
            return decodeHex(text).map(SQLValue.bytes) ?? .text(text)
        default:
            return .text(text)
        }
    }

    private static func decodeHex(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count >= 2, digits[0] == UInt8(ascii: "\\"), digits[1] == UInt8(ascii: "x"),
            digits.count % 2 == 0
        else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity((digits.count - 2) / 2)
        var index = 2
        while index < digits.count {
            guard let high = hex(digits[index]), let low = hex(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func hex(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A `PGcancel*`: sends a cancel request for the query running on its connection. Blocking (it opens a new
/// connection), so it runs on a worker thread.
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
