/// A value bound to a statement parameter.
///
/// Values always travel to the database as bound parameters, never as SQL text.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case double(Double)
    case text(String)
    case bytes([UInt8])
    case bool(Bool)
    /// A value no database can store exactly — a `Date` that is NaN, infinite or beyond about ±292,000 years
    /// — with the reason. Binding it fails with ``SQLError/Kind/invalidParameter`` before anything is sent
    /// (naming the column where one is known); it is never read from a database.
    case unrepresentable(String)

    // Written out (the synthesized one means the same) to be inlinable: the ORM's change check compares
    // values inside each model's `encode(to:)`.
    @inlinable
    public static func == (lhs: SQLValue, rhs: SQLValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.integer(let left), .integer(let right)): left == right
        case (.double(let left), .double(let right)): left == right
        case (.text(let left), .text(let right)): left == right
        case (.bytes(let left), .bytes(let right)): left == right
        case (.bool(let left), .bool(let right)): left == right
        case (.unrepresentable(let left), .unrepresentable(let right)): left == right
        default: false
        }
    }
}

/// A Swift type that can be bound as a statement parameter.
public protocol SQLBindable: Sendable {
    /// The value to bind.
    var sqlValue: SQLValue { get }
}

extension Int: SQLBindable { @inlinable public var sqlValue: SQLValue { .integer(Int64(self)) } }
extension Int8: SQLBindable { @inlinable public var sqlValue: SQLValue { .integer(Int64(self)) } }
extension Int16: SQLBindable { @inlinable public var sqlValue: SQLValue { .integer(Int64(self)) } }
extension Int32: SQLBindable { @inlinable public var sqlValue: SQLValue { .integer(Int64(self)) } }
extension Int64: SQLBindable { @inlinable public var sqlValue: SQLValue { .integer(self) } }
extension Double: SQLBindable { @inlinable public var sqlValue: SQLValue { .double(self) } }
extension Float: SQLBindable { @inlinable public var sqlValue: SQLValue { .double(Double(self)) } }
extension String: SQLBindable { @inlinable public var sqlValue: SQLValue { .text(self) } }
extension Substring: SQLBindable { public var sqlValue: SQLValue { .text(String(self)) } }
extension Bool: SQLBindable { @inlinable public var sqlValue: SQLValue { .bool(self) } }
extension [UInt8]: SQLBindable { public var sqlValue: SQLValue { .bytes(self) } }
extension SQLValue: SQLBindable { public var sqlValue: SQLValue { self } }
extension Optional: SQLBindable where Wrapped: SQLBindable {
    public var sqlValue: SQLValue { self?.sqlValue ?? .null }
}
