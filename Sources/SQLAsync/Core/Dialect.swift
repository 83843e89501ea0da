/// The SQL a database speaks: how statements are written for it.
public enum SQLDialect: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    case postgresql
    case sqlite

    public var description: String { rawValue }

    /// How the dialect writes parameter placeholders.
    public var placeholderStyle: SQL.PlaceholderStyle {
        switch self {
        case .postgresql: .dollarNumbered
        case .sqlite: .questionMark
        }
    }

    /// The column type a dialect declares for `type`.
    func typeName(_ type: ColumnType) -> String {
        switch (self, type) {
        case (.postgresql, .int16): "SMALLINT"
        case (.postgresql, .int32): "INTEGER"
        case (.postgresql, .int64): "BIGINT"
        case (.postgresql, .float): "REAL"
        case (.postgresql, .double): "DOUBLE PRECISION"
        case (.postgresql, .text): "TEXT"
        case (.postgresql, .bytes): "BYTEA"
        case (.postgresql, .bool): "BOOLEAN"
        case (.postgresql, .timestamp): "TIMESTAMPTZ"
        case (.postgresql, .uuid): "UUID"
        case (.postgresql, .decimal): "NUMERIC"
        case (.postgresql, .json): "JSONB"
        // SQLite has five storage classes; the declared name sets the column's affinity. Timestamps, UUIDs,
        // decimals and JSON are stored as exact text.
        case (.sqlite, .int16), (.sqlite, .int32), (.sqlite, .int64), (.sqlite, .bool): "INTEGER"
        case (.sqlite, .float), (.sqlite, .double): "REAL"
        case (.sqlite, .text), (.sqlite, .timestamp), (.sqlite, .uuid), (.sqlite, .json): "TEXT"
        case (.sqlite, .decimal): "TEXT"  // not NUMERIC: that affinity would round to a double
        case (.sqlite, .bytes): "BLOB"
        case (_, .custom(let name)): name
        }
    }
}

/// The type of a column, as far as the DDL is concerned. Each dialect names it its own way.
public enum ColumnType: Sendable, Hashable {
    case int16, int32, int64
    case float, double
    case text, bytes, bool
    /// A point in time: PostgreSQL `TIMESTAMPTZ` (microseconds), SQLite ISO 8601 text.
    case timestamp
    case uuid
    /// An exact decimal: PostgreSQL `NUMERIC`, SQLite text.
    case decimal
    /// JSON: PostgreSQL `JSONB`, SQLite text.
    case json
    /// A type name written as it is, for both dialects (trusted schema text, never user input).
    case custom(String)
}
