/// One row of a result: values by position and by column name.
public struct Row: Sendable, CustomStringConvertible {
    /// The result's column names, shared by its rows.
    public let columns: [String]
    /// The result's values (shared by its rows), this row's from `offset` on.
    let storage: [SQLValue]
    let offset: Int

    init(columns: [String], values: [SQLValue]) {
        self.columns = columns
        storage = values
        offset = 0
    }

    init(columns: [String], storage: [SQLValue], offset: Int) {
        self.columns = columns
        self.storage = storage
        self.offset = offset
    }

    /// The values, in column order.
    public var values: [SQLValue] {
        offset == 0 && storage.count == columns.count ? storage : Array(storage[offset..<offset + columns.count])
    }

    /// The value at `index`, or `nil` past the last column.
    public subscript(_ index: Int) -> SQLValue? { index >= 0 && index < columns.count ? storage[offset + index] : nil }

    /// The value of the first column named `name`, or `nil` when there is none.
    public subscript(_ name: String) -> SQLValue? { columns.firstIndex(of: name).map { storage[offset + $0] } }

    /// The value at `index` as `T`.
    ///
    /// - Throws: ``SQLError/Kind/decoding`` for a missing column, a mismatch, or a NULL into a non-optional.
    public func decode<T: SQLDecodable>(_ index: Int, as type: T.Type = T.self) throws(SQLError) -> T {
        guard let value = self[index] else {
            throw SQLError(.decoding, "the row has \(values.count) columns; there is no column \(index)")
        }
        return try T(sqlValue: value, column: columns[index])
    }

    /// The value of column `name` as `T`.
    ///
    /// - Throws: ``SQLError/Kind/decoding`` for a missing column, a mismatch, or a NULL into a non-optional.
    public func decode<T: SQLDecodable>(_ name: String, as type: T.Type = T.self) throws(SQLError) -> T {
        guard let value = self[name] else {
            throw SQLError(.decoding, "the row has no column '\(name)' (it has \(columns.joined(separator: ", ")))")
        }
        return try T(sqlValue: value, column: name)
    }

    /// Column name → value (the last column wins when names repeat).
    public var mapping: [String: SQLValue] {
        Dictionary(zip(columns, storage[offset..<offset + columns.count]), uniquingKeysWith: { _, last in last })
    }

    /// Column names only: values may be private.
    public var description: String { "Row(\(columns.joined(separator: ", ")))" }
}
