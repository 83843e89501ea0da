#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
    /// A `Date` no database can store exactly — NaN, infinite or beyond about ±292,000 years from 1970 — as
    /// its seconds since 1970. Binding it fails with ``SQLError/Kind/invalidParameter`` before anything is sent
    /// (naming the column where one is known); it is never read from a database. Like NaN it equals nothing,
    /// itself included. (A payload without a reference, and no case of its own in `==`, keep copying and
    /// comparing values — the ORM's change check — as cheap as before it existed.)
    case unstorableDate(secondsSince1970: Double)

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

extension SQLValue {
    /// Why no database can store this value, for the error that refuses it; nil for every storable value.
    public var unstorableReason: String? {
        guard case .unstorableDate(let seconds) = self else { return nil }
        return "the Date \(seconds) s since 1970 has no timestamp: NaN, infinite and dates beyond about ±292,000 years "
            + "cannot be stored"
    }

    /// A column's text as read from a database: `.text` when `bytes` are valid UTF-8, else `.bytes` — never a
    /// string with U+FFFD in place of what was stored.
    ///
    /// `String(decoding:)` (the standard library's fast path, which validates as it copies) and a `memcmp`
    /// of what it made: it differs only when invalid sequences were replaced. (`String(validating:)` takes a
    /// generic path that made reading rows of text about a third slower.)
    static func text(exactly bytes: UnsafeRawBufferPointer) -> SQLValue {
        let text = String(decoding: bytes, as: UTF8.self)
        let exact = text.utf8.withContiguousStorageIfAvailable { stored -> Bool in
            guard stored.count == bytes.count else { return false }
            guard let left = stored.baseAddress, let right = bytes.baseAddress else { return true }  // both empty
            return memcmp(left, right, bytes.count) == 0
        } ?? text.utf8.elementsEqual(bytes)
        return exact ? .text(text) : .bytes(Array(bytes))
    }
}
