import CLibPQ

/// Rows in PostgreSQL's COPY text format (tab between values, a newline after each row, `\N` for NULL,
/// backslash escapes), each value checked first against its column's type so that nothing is altered on the
/// way: an integer the column cannot hold exactly, bytes into a column that is not bytea (a text column would
/// store their hex spelling), text with a NUL byte and an unstorable date are refused, naming the row and the
/// column. A domain's column is checked against the domain's base type.
///
/// Values are written as a bound parameter of the same value would be sent (integers in decimal, doubles in
/// their shortest exact form, booleans as `true` / `false`, bytes as bytea hex), so that `copy(_:into:)`
/// stores what `INSERT` would.
struct CopyTextEncoder {
    /// The target columns' names, for errors.
    let columns: [String]
    /// The target columns' types (0: unknown, nothing checked beyond the value itself).
    let types: [Oid]
    /// The COPY statement, for errors.
    let sql: String
    /// How many rows were encoded.
    private(set) var rows = 0

    init(columns: [String], types: [Oid], sql: String) {
        self.columns = columns
        self.types = types.count == columns.count ? types : Array(repeating: 0, count: columns.count)
        self.sql = sql
    }

    /// Appends `row` to `buffer`, or throws without appending anything.
    mutating func append(_ row: [SQLValue], to buffer: inout [UInt8]) throws(SQLError) {
        let number = rows + 1
        guard row.count == columns.count else {
            throw SQLError(.misuse, "row \(number) has \(row.count) values for the \(columns.count) columns", sql: sql)
        }
        let start = buffer.count
        do {
            for (index, value) in row.enumerated() {
                if index > 0 { buffer.append(UInt8(ascii: "\t")) }
                try append(value, column: index, row: number, to: &buffer)
            }
        } catch {
            buffer.removeSubrange(start...)
            throw error
        }
        buffer.append(UInt8(ascii: "\n"))
        rows = number
    }

    private func append(_ value: SQLValue, column: Int, row: Int, to buffer: inout [UInt8]) throws(SQLError) {
        switch value {
        case .null:
            buffer.append(UInt8(ascii: "\\"))
            buffer.append(UInt8(ascii: "N"))
        case .integer(let integer):
            if let type = PGHandle.integerMisfit(integer, type: types[column]) {
                throw refusal(column, row, "is \(integer), which the column's type \(type) cannot hold exactly")
            }
            buffer.append(contentsOf: String(integer).utf8)
        case .double(let double):
            buffer.append(contentsOf: PGHandle.text(double).utf8)  // digits, '.', 'e', signs, letters: no escapes
        case .bool(let bool):
            buffer.append(contentsOf: (bool ? "true" : "false").utf8)
        case .text(let text):
            for byte in text.utf8 {
                switch byte {
                case 0: throw refusal(column, row, "is text with a NUL byte, which PostgreSQL cannot store; copy it as bytes")
                case UInt8(ascii: "\\"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "\\"))
                case UInt8(ascii: "\t"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "t"))
                case UInt8(ascii: "\n"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "n"))
                case UInt8(ascii: "\r"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "r"))
                default: buffer.append(byte)
                }
            }
        case .bytes(let bytes):
            // Only a bytea column reads bytea's hex form as bytes: any other type would store the spelling (a
            // bound parameter of bytes is refused there by the server).
            guard types[column] == 17 || types[column] == 0 else {
                throw refusal(column, row, "is bytes, which a \(PGHandle.typeName(types[column])) column cannot take (only bytea can)")
            }
            // bytea's hex form, its backslash escaped for COPY: \\x0aff…
            buffer.append(UInt8(ascii: "\\"))
            buffer.append(UInt8(ascii: "\\"))
            buffer.append(UInt8(ascii: "x"))
            let digits = Array("0123456789abcdef".utf8)
            for byte in bytes {
                buffer.append(digits[Int(byte >> 4)])
                buffer.append(digits[Int(byte & 0x0F)])
            }
        case .unstorableDate:
            throw refusal(column, row, value.unstorableReason ?? "cannot be stored")
        }
    }

    private func refusal(_ column: Int, _ row: Int, _ what: String) -> SQLError {
        SQLError(.invalidParameter, "row \(row), column '\(columns[column])': the value \(what)", sql: sql)
    }
}
