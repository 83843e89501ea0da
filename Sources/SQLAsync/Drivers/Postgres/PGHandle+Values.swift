import CLibPQ

// Values between Swift and PostgreSQL: the types and text a bound value is sent as (checked against the types
// the server gave the parameters), and the decoding of results, text or binary, by column type.

extension PGHandle {
    /// The type PostgreSQL is told for a value (0: let the server infer it from the context).
    static func typeOID(_ value: SQLValue) -> Oid {
        switch value {
        case .null, .text: 0
        case .integer: 20
        case .double: 701
        case .bool: 16
        case .bytes: 17
        case .unstorableDate: 0
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
            guard case .integer(let integer) = value, let name = integerMisfit(integer, type: types[index]) else { continue }
            throw SQLError(
                .invalidParameter,
                "parameter $\(index + 1) is \(integer), which the parameter's type \(name) cannot hold exactly",
                sql: sql)
        }
    }

    /// The name of `type` when it cannot hold `integer` exactly (sent as text, it would be refused or
    /// rounded), or nil.
    static func integerMisfit(_ integer: Int64, type: Oid) -> String? {
        let (name, fits): (String, Bool) =
            switch type {
            case 21: ("smallint (int2)", Int16(exactly: integer) != nil)
            case 23: ("integer (int4)", Int32(exactly: integer) != nil)
            case 26: ("oid", UInt32(exactly: integer) != nil)
            case 700: ("real (float4)", integer.magnitude <= 1 << 24)
            case 701: ("double precision (float8)", integer.magnitude <= 1 << 53)
            default: ("", true)
            }
        return fits ? nil : name
    }

    /// Why PostgreSQL cannot take `value` as parameter `$number`, or nil: text with a NUL byte, a value no
    /// database can store. Checked before anything is sent.
    @inline(__always)
    static func refusal(_ value: SQLValue, number: Int, sql: String) -> SQLError? {
        switch value {
        case .text(let text) where text.utf8.contains(0): nulText(number: number, sql: sql)
        case .unstorableDate: unstorable(value, number: number, sql: sql)
        default: nil
        }
    }

    static func nulText(number: Int, sql: String) -> SQLError {
        SQLError(.misuse, "parameter $\(number) is text with a NUL byte, which PostgreSQL cannot store; bind it as bytes", sql: sql)
    }

    static func unstorable(_ value: SQLValue, number: Int, sql: String) -> SQLError {
        SQLError(.invalidParameter, "parameter $\(number): \(value.unstorableReason ?? "")", sql: sql)
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
                // The checks of ``refusal(_:number:sql:)``, inline: this runs for every bound value.
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
                    if text.utf8.contains(0) { throw PGHandle.nulText(number: index + 1, sql: sql) }
                    buffers.append(Array(text.utf8)); formats.append(0)
                case .bytes(let bytes):
                    buffers.append(bytes); formats.append(1)
                case .unstorableDate:
                    throw PGHandle.unstorable(value, number: index + 1, sql: sql)
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
    static func text(_ double: Double) -> String {
        if double.isNaN { return "NaN" }
        if double.isInfinite { return double < 0 ? "-Infinity" : "Infinity" }
        return "\(double)"
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
        default:  // text, varchar, bpchar, name; not valid UTF-8 (a SQL_ASCII database): its bytes, never altered
            return .text(exactly: bytes)
        }
    }

    private static func value(_ bytes: UnsafeRawBufferPointer, type: Oid) -> SQLValue {
        // Text that is not valid UTF-8 (possible in a SQL_ASCII database) arrives as its bytes: decoding it as a
        // String is then a typed error naming the column, never a U+FFFD in place of what was stored.
        guard case .text(let text) = SQLValue.text(exactly: bytes) else { return .bytes(Array(bytes)) }
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
