/// The rows and counters of one statement, read in full.
///
/// ```swift
/// let result = try await connection.execute("SELECT id, name FROM users WHERE age > \(30)")
/// for row in result { print(try row.decode("name", as: String.self)) }
/// let count: Int? = try await connection.execute("SELECT count(*) FROM users").scalar()
/// ```
public struct QueryResult: Sendable, RandomAccessCollection {
    /// The column names.
    public let columns: [String]
    /// The database's type of each column, beside ``columns``: PostgreSQL's type name (`int4`, `text`,
    /// `timestamptz`…; a type that is not built in, such as an enum or a domain, as `oid 16385`), SQLite's
    /// declared type of the column (`INTEGER`, `VARCHAR(20)`…; empty for an expression, which has none).
    public let columnTypes: [String]
    /// Rows inserted, updated or deleted (0 for queries).
    public let rowsAffected: Int
    /// Every row's values one after another (`columns.count` per row).
    private let values: [SQLValue]
    private let rowCount: Int

    init(_ raw: RawRows) {
        columns = raw.columns
        columnTypes = raw.columnTypes
        rowsAffected = raw.rowsAffected
        values = raw.values
        rowCount = raw.rowCount
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { rowCount }
    public subscript(position: Int) -> Row {
        precondition(position >= 0 && position < rowCount, "QueryResult index \(position) out of range 0..<\(rowCount)")
        return Row(columns: columns, storage: values, offset: position * columns.count)
    }

    /// Every row.
    public func all() -> [Row] { Array(self) }

    /// The first row, or `nil` when there is none.
    public func first() -> Row? { isEmpty ? nil : self[startIndex] }

    /// The only row.
    ///
    /// - Throws: ``SQLError/Kind/noRows`` when there is no row; ``SQLError/Kind/multipleRows`` when there is
    ///   more than one (two kinds, so that "not found" can be told from "not unique").
    public func one() throws(SQLError) -> Row {
        if isEmpty { throw SQLError(.noRows, "one() expected exactly one row, got none") }
        guard count == 1 else { throw SQLError(.multipleRows, "one() expected exactly one row, got \(count)") }
        return self[startIndex]
    }

    /// The only row, or `nil` when there is none.
    ///
    /// - Throws: ``SQLError/Kind/multipleRows`` when there is more than one.
    public func oneOrNone() throws(SQLError) -> Row? {
        guard count <= 1 else {
            throw SQLError(.multipleRows, "oneOrNone() expected at most one row, got \(count)")
        }
        return first()
    }

    /// The first column of the first row as `T`, or `nil` when there is no row.
    public func scalar<T: SQLDecodable>(_ type: T.Type = T.self) throws(SQLError) -> T? {
        guard let row = first() else { return nil }
        return try row.decode(0, as: T.self)
    }

    /// The first column of every row as `T`.
    public func scalars<T: SQLDecodable>(_ type: T.Type = T.self) throws(SQLError) -> [T] {
        var values: [T] = []
        values.reserveCapacity(count)
        for row in self { values.append(try row.decode(0, as: T.self)) }
        return values
    }

    /// Every row as column name → value.
    public func mappings() -> [[String: SQLValue]] { map(\.mapping) }
}
