/// A Swift type a column value decodes to.
///
/// A mismatch, or a NULL into a non-optional, is an ``SQLError`` of kind ``SQLError/Kind/decoding`` naming
/// the column — never a crash, and nothing is silently altered (an out-of-range integer is an error, not a
/// truncation).
public protocol SQLDecodable: Sendable {
    /// Decodes `value`, read from `column`.
    init(sqlValue value: SQLValue, column: String) throws(SQLError)
}

extension SQLError {
    static func decoding(_ column: String, _ value: SQLValue, as type: Any.Type) -> SQLError {
        let found: String
        switch value {
        case .null: found = "NULL"
        case .integer: found = "an integer"
        case .double: found = "a floating-point number"
        case .text: found = "text"
        case .bytes: found = "bytes (text that is not valid UTF-8 arrives as its bytes)"
        case .bool: found = "a boolean"
        case .unstorableDate: found = "a Date no database can store"
        }
        return SQLError(.decoding, "column '\(column)' holds \(found), which does not decode to \(type)")
    }
}

extension Int64: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .integer(let integer): self = integer
        case .bool(let bool): self = bool ? 1 : 0
        default: throw .decoding(column, value, as: Int64.self)
        }
    }
}

extension FixedWidthInteger where Self: SQLDecodable {
    /// Decodes through `Int64` and checks the range.
    fileprivate static func narrowing(_ value: SQLValue, column: String) throws(SQLError) -> Self {
        let wide = try Int64(sqlValue: value, column: column)
        guard let narrow = Self(exactly: wide) else {
            throw SQLError(.decoding, "column '\(column)' holds \(wide), which is out of range for \(Self.self)")
        }
        return narrow
    }
}

extension Int: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) { self = try .narrowing(value, column: column) }
}
extension Int32: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) { self = try .narrowing(value, column: column) }
}
extension Int16: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) { self = try .narrowing(value, column: column) }
}
extension Int8: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) { self = try .narrowing(value, column: column) }
}

extension Double: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .double(let double): self = double
        case .integer(let integer):
            guard let exact = Double(exactly: integer) else {
                throw SQLError(.decoding, "column '\(column)' holds \(integer), which a Double cannot hold exactly")
            }
            self = exact
        default: throw .decoding(column, value, as: Double.self)
        }
    }
}

extension Float: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        let double = try Double(sqlValue: value, column: column)
        guard let exact = Float(exactly: double) ?? (double.isNaN ? .nan : nil) else {
            throw SQLError(.decoding, "column '\(column)' holds \(double), which a Float cannot hold exactly")
        }
        self = exact
    }
}

extension Bool: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .bool(let bool): self = bool
        case .integer(0): self = false
        case .integer(1): self = true
        default: throw .decoding(column, value, as: Bool.self)
        }
    }
}

extension String: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        guard case .text(let text) = value else { throw .decoding(column, value, as: String.self) }
        self = text
    }
}

extension [UInt8]: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        guard case .bytes(let bytes) = value else { throw .decoding(column, value, as: [UInt8].self) }
        self = bytes
    }
}

extension SQLValue: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) { self = value }
}

extension Optional: SQLDecodable where Wrapped: SQLDecodable {
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        if case .null = value {
            self = nil
        } else {
            self = try Wrapped(sqlValue: value, column: column)
        }
    }
}
