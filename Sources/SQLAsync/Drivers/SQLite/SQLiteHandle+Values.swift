import CSQLite3

// Values between Swift and SQLite: binding parameters (text and blobs whole, copied by SQLite) and reading
// columns by their storage class, and the declared types of a result's columns.

extension SQLiteHandle {
    /// The error for a value SQLite would silently alter, refused rather than stored: NaN (SQLite stores it
    /// as NULL) and −0.0 (a REAL column stores it as the integer 0, read back as +0.0).
    static func unstorable(_ value: SQLValue, parameter: Int, sql: String) -> SQLError? {
        let double: Double
        switch value {
        case .double(let value): double = value
        case .unstorableDate:
            return SQLError(.invalidParameter, "parameter \(parameter): \(value.unstorableReason ?? "")", sql: sql)
        default: return nil
        }
        if double.isNaN {
            return SQLError(.misuse, "parameter \(parameter) is NaN, which SQLite cannot store (it would become NULL)", sql: sql)
        }
        if double == 0, double.sign == .minus {
            return SQLError(
                .misuse, "parameter \(parameter) is -0.0, which SQLite cannot store (it would read back as 0.0)", sql: sql)
        }
        return nil
    }

    /// The declared type of each result column (`""` for an expression, which has none).
    static func declaredTypes(_ statement: OpaquePointer, _ columnCount: Int32) -> [String] {
        (0..<columnCount).map { sqlite3_column_decltype(statement, $0).map { String(cString: $0) } ?? "" }
    }

    func bind(_ value: SQLValue, at index: Int32, in statement: OpaquePointer) -> Int32 {
        switch value {
        case .null: return sqlite3_bind_null(statement, index)
        case .integer(let integer): return sqlite3_bind_int64(statement, index, integer)
        case .double(let double): return sqlite3_bind_double(statement, index, double)
        case .bool(let bool): return sqlite3_bind_int64(statement, index, bool ? 1 : 0)
        case .unstorableDate: return SQLITE_MISMATCH  // refused before binding (unstorable)
        case .text(let text):
            // Explicit length: text with NUL bytes binds whole. SQLite copies it (SQLITE_TRANSIENT).
            var text = text
            return text.withUTF8 { bytes in
                guard let base = bytes.baseAddress else {
                    return sqlite3_bind_text64(statement, index, "", 0, sqliteTransient, UInt8(SQLITE_UTF8))
                }
                return base.withMemoryRebound(to: CChar.self, capacity: bytes.count) { characters in
                    sqlite3_bind_text64(
                        statement, index, characters, sqlite3_uint64(bytes.count), sqliteTransient, UInt8(SQLITE_UTF8))
                }
            }
        case .bytes(let bytes):
            return bytes.withUnsafeBytes { buffer in
                sqlite3_bind_blob64(
                    statement, index, buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1), sqlite3_uint64(buffer.count),
                    sqliteTransient)
            }
        }
    }

    func value(at column: Int32, in statement: OpaquePointer) -> SQLValue {
        switch sqlite3_column_type(statement, column) {
        case SQLITE_INTEGER: return .integer(sqlite3_column_int64(statement, column))
        case SQLITE_FLOAT: return .double(sqlite3_column_double(statement, column))
        case SQLITE_TEXT:
            let count = Int(sqlite3_column_bytes(statement, column))
            guard let pointer = sqlite3_column_text(statement, column) else { return .text("") }
            // Text that is not valid UTF-8 (SQLite stores whatever it is given): its bytes, never altered.
            return .text(exactly: UnsafeRawBufferPointer(start: pointer, count: count))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(statement, column))
            guard count > 0, let pointer = sqlite3_column_blob(statement, column) else { return .bytes([]) }
            return .bytes(Array(UnsafeRawBufferPointer(start: pointer, count: count)))
        default: return .null
        }
    }
}

/// `SQLITE_TRANSIENT`: SQLite copies the bound bytes before the call returns (a C macro Swift cannot import).
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
