/// A table's description: its name, columns, constraints and indexes — declared once, as static members of a
/// type, and used both for the DDL and for typed queries.
///
/// ```swift
/// enum Users: TableSchema {
///     static let tableName = "users"
///     static let id = Column<Int64>("id", of: Users.self, .primaryKey, .autoIncrement)
///     static let name = Column<String>("name", of: Users.self, .unique)
///     static let teamID = Column<Int64?>("team_id", of: Users.self, .references(Teams.id, onDelete: .cascade))
///     static let columns: [any AnyColumn] = [id, name, teamID]
///     static let indexes = [Index(on: teamID)]
/// }
/// ```
public protocol TableSchema {
    /// The table's name in the database.
    static var tableName: String { get }
    /// The columns, in the order the DDL declares them.
    static var columns: [any AnyColumn] { get }
    /// Constraints over several columns (a composite primary key, unique or foreign key). Default: none.
    static var constraints: [TableConstraint] { get }
    /// Indexes. Default: none.
    static var indexes: [Index] { get }
}

extension TableSchema {
    public static var constraints: [TableConstraint] { [] }
    public static var indexes: [Index] { [] }

    /// The table this type describes.
    public static var table: Table {
        Table(tableName, columns: columns.map(\.definition), constraints: constraints, indexes: indexes)
    }
}

/// A table: what ``TableSchema`` declares, as a value (build one directly for tables known only at run time).
public struct Table: Sendable {
    /// The table's name.
    public let name: String
    /// The name queries use for it: its alias, or its name.
    public let reference: String
    public let columns: [ColumnDefinition]
    public let constraints: [TableConstraint]
    public let indexes: [Index]

    public init(_ name: String, columns: [ColumnDefinition], constraints: [TableConstraint] = [], indexes: [Index] = []) {
        self.name = name
        self.reference = name
        self.columns = columns
        self.constraints = constraints
        self.indexes = indexes
    }

    private init(_ table: Table, alias: String) {
        name = table.name
        reference = alias
        columns = table.columns
        constraints = table.constraints
        indexes = table.indexes
    }

    /// The table under another name, for a self-join: `FROM "users" AS "boss"`. Qualify its columns with
    /// ``Column/of(_:)``.
    public func aliased(_ alias: String) -> Table { Table(self, alias: alias) }

    /// The primary key's columns: from the columns marked `.primaryKey`, or a ``TableConstraint/primaryKey(_:)``.
    public var primaryKey: [String] {
        let inline = columns.filter(\.isPrimaryKey).map(\.name)
        if !inline.isEmpty { return inline }
        for constraint in constraints { if case .primaryKey(let names) = constraint.kind { return names } }
        return []
    }

    /// The tables this one references through foreign keys (itself excluded).
    var referencedTables: Set<String> {
        var names = Set(columns.compactMap { $0.reference?.table })
        for constraint in constraints { if case .foreignKey(_, let table, _, _, _) = constraint.kind { names.insert(table) } }
        names.remove(name)
        return names
    }

    /// `FROM` text: the quoted name, and the alias when there is one.
    func renderReference(into sql: inout SQL) {
        sql.appendText(SQL.quoted(name))
        if reference != name { sql.appendText(" AS " + SQL.quoted(reference)) }
    }
}

/// A column of any type, for lists of columns.
public protocol AnyColumn: Sendable {
    /// The column's DDL description.
    var definition: ColumnDefinition { get }
    /// The table (or alias) that qualifies the column in queries.
    var qualifier: String { get }
}

/// A typed column of a table: an expression in queries, a target in inserts and updates.
public struct Column<Value: SQLColumnValue>: SQLExpressible, AnyColumn {
    public let definition: ColumnDefinition
    public let qualifier: String

    /// A column of the table `schema` declares.
    public init<Schema: TableSchema>(_ name: String, of schema: Schema.Type, _ options: ColumnOption...) {
        self.init(name, table: Schema.tableName, options)
    }

    /// A column of the table named `table`.
    public init(_ name: String, table: String, _ options: ColumnOption...) {
        self.init(name, table: table, options)
    }

    init(_ name: String, table: String, _ options: [ColumnOption]) {
        definition = ColumnDefinition(name: name, type: Value.columnType, nullable: Value.isOptional, options: options)
        qualifier = table
    }

    private init(definition: ColumnDefinition, qualifier: String) {
        self.definition = definition
        self.qualifier = qualifier
    }

    /// The column's name.
    public var name: String { definition.name }

    public var node: SQLNode { SQLNode(.column(qualifier: qualifier, name: definition.name)) }

    /// The same column, qualified by an aliased table (``Table/aliased(_:)``).
    public func of(_ table: Table) -> Column { Column(definition: definition, qualifier: table.reference) }

    /// `column = value` in an INSERT or UPDATE (the value bound).
    public func set(_ value: Value) -> Assignment { Assignment(column: name, node: SQLNode(.value(value.sqlValue))) }

    /// `column = expression` in an INSERT or UPDATE (`Users.visits.set(Users.visits + 1)`).
    public func set<E: SQLExpressible>(_ expression: E) -> Assignment where E.Value.NonOptional == Value.NonOptional {
        Assignment(column: name, node: expression.node)
    }

    /// The value an upsert tried to insert (`excluded."column"`), for ``Insert/onConflict(_:doUpdate:)``.
    public var excluded: SQLExpression<Value> { SQLExpression(.excluded(name)) }
}

/// One `column = value` of an INSERT or UPDATE.
public struct Assignment: Sendable {
    let column: String
    let node: SQLNode
}

/// How a column is declared: name, type, nullability and its single-column constraints.
public struct ColumnDefinition: Sendable, Hashable {
    public let name: String
    public let type: ColumnType
    /// Whether NULL is allowed (the column's Swift type is optional).
    public let nullable: Bool
    public private(set) var isPrimaryKey = false
    /// Generated by the database on insert (PostgreSQL identity, SQLite `AUTOINCREMENT`).
    public private(set) var isAutoIncrement = false
    public private(set) var isUnique = false
    public private(set) var defaultValue: ColumnDefault?
    public private(set) var reference: ForeignKeyTarget?

    public init(name: String, type: ColumnType, nullable: Bool, options: [ColumnOption] = []) {
        self.name = name
        self.type = type
        self.nullable = nullable
        for option in options {
            switch option.kind {
            case .primaryKey: isPrimaryKey = true
            case .autoIncrement: isAutoIncrement = true
            case .unique: isUnique = true
            case .defaultValue(let value): defaultValue = value
            case .references(let target): reference = target
            }
        }
    }
}

/// A column's default, written into the DDL.
public enum ColumnDefault: Sendable, Hashable {
    /// A value, written as an escaped literal (DDL takes no bound parameters).
    case value(SQLValue)
    /// An SQL expression written as it is (`CURRENT_TIMESTAMP`). Trusted schema text only.
    case unsafeExpression(String)
}

/// What happens to referencing rows when the referenced row is deleted or its key updated.
public enum ReferentialAction: String, Sendable, Hashable {
    case noAction = "NO ACTION"
    case restrict = "RESTRICT"
    case cascade = "CASCADE"
    case setNull = "SET NULL"
    case setDefault = "SET DEFAULT"
}

/// The column a foreign key points at.
public struct ForeignKeyTarget: Sendable, Hashable {
    public let table: String
    public let column: String
    public let onDelete: ReferentialAction
    public let onUpdate: ReferentialAction
}

/// An option of a column declaration.
public struct ColumnOption: Sendable {
    enum Kind: Sendable {
        case primaryKey, autoIncrement, unique
        case defaultValue(ColumnDefault)
        case references(ForeignKeyTarget)
    }

    let kind: Kind

    /// Part of the primary key (mark several columns for a composite key).
    public static let primaryKey = ColumnOption(kind: .primaryKey)
    /// Generated by the database on insert: an identity column (PostgreSQL) or `AUTOINCREMENT` (SQLite).
    public static let autoIncrement = ColumnOption(kind: .autoIncrement)
    /// No two rows share a value.
    public static let unique = ColumnOption(kind: .unique)

    /// A default value, written as an escaped literal in the DDL.
    public static func `default`(_ value: some SQLBindable) -> ColumnOption {
        ColumnOption(kind: .defaultValue(.value(value.sqlValue)))
    }

    /// A default SQL expression such as `CURRENT_TIMESTAMP`, written as it is. Trusted schema text only.
    public static func defaultExpression(unsafeRaw text: String) -> ColumnOption {
        ColumnOption(kind: .defaultValue(.unsafeExpression(text)))
    }

    /// A foreign key to `column`.
    public static func references<V>(
        _ column: Column<V>, onDelete: ReferentialAction = .noAction, onUpdate: ReferentialAction = .noAction
    ) -> ColumnOption {
        ColumnOption(kind: .references(ForeignKeyTarget(
            table: column.qualifier, column: column.name, onDelete: onDelete, onUpdate: onUpdate)))
    }
}

/// A constraint over several columns.
public struct TableConstraint: Sendable {
    enum Kind: Sendable {
        case primaryKey([String])
        case unique([String])
        case foreignKey([String], table: String, columns: [String], onDelete: ReferentialAction, onUpdate: ReferentialAction)
    }

    let kind: Kind

    /// A composite primary key.
    public static func primaryKey(_ columns: any AnyColumn...) -> TableConstraint {
        TableConstraint(kind: .primaryKey(columns.map(\.definition.name)))
    }

    /// No two rows share the combination of these columns' values.
    public static func unique(_ columns: any AnyColumn...) -> TableConstraint {
        TableConstraint(kind: .unique(columns.map(\.definition.name)))
    }

    /// A composite foreign key: `columns` reference `targets` (the same count, of one table).
    public static func foreignKey(
        _ columns: [any AnyColumn], references targets: [any AnyColumn],
        onDelete: ReferentialAction = .noAction, onUpdate: ReferentialAction = .noAction
    ) -> TableConstraint {
        TableConstraint(kind: .foreignKey(
            columns.map(\.definition.name), table: targets.first?.qualifier ?? "",
            columns: targets.map(\.definition.name), onDelete: onDelete, onUpdate: onUpdate))
    }
}

/// An index on some columns of a table.
public struct Index: Sendable {
    /// The index's name (default `ix_<table>_<columns>`).
    public let name: String
    let table: String
    let columns: [String]
    public let unique: Bool

    public init(_ name: String? = nil, on columns: any AnyColumn..., unique: Bool = false) {
        let table = columns.first?.qualifier ?? ""
        let names = columns.map(\.definition.name)
        self.name = name ?? "ix_\(table)_\(names.joined(separator: "_"))"
        self.table = table
        self.columns = names
        self.unique = unique
    }
}
