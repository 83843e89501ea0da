/// A statement built with the query builder: compiled per dialect, every value bound, every identifier quoted.
public protocol SQLStatement: Sendable {
    /// Writes the statement for `dialect`.
    func render(into sql: inout SQL, _ dialect: SQLDialect)
    /// A problem found while building (for example rows of an insert with different columns).
    var buildError: String? { get }
}

extension SQLStatement {
    public var buildError: String? { nil }

    /// The statement as ``SQL`` for `dialect`: text with placeholders, and its bound values.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the statement was built inconsistently.
    public func sql(for dialect: SQLDialect) throws(SQLError) -> SQL {
        if let buildError { throw SQLError(.misuse, buildError) }
        var sql = SQL(fragments: [])
        render(into: &sql, dialect)
        return sql
    }

    /// The statement compiled for every dialect, once: reuse it to skip the building and rendering per
    /// execution. Give changing values as named ``Parameter``s.
    public func compiled() throws(SQLError) -> CompiledStatement {
        try CompiledStatement(postgresql: sql(for: .postgresql), sqlite: sql(for: .sqlite))
    }
}

extension SQL: SQLStatement {
    public func render(into sql: inout SQL, _ dialect: SQLDialect) { sql.append(self) }
}

/// A statement compiled for each dialect: its text and parameter layout, computed once.
public struct CompiledStatement: Sendable {
    struct Form: Sendable {
        let sql: SQL
        let text: String
    }

    private let postgresql: Form
    private let sqlite: Form

    init(postgresql: SQL, sqlite: SQL) {
        self.postgresql = Form(sql: postgresql, text: postgresql.text(placeholders: .dollarNumbered))
        self.sqlite = Form(sql: sqlite, text: sqlite.text(placeholders: .questionMark))
    }

    /// The statement's text for `dialect`, with placeholders (never the values).
    public func text(for dialect: SQLDialect) -> String { form(dialect).text }

    /// The names of its named parameters.
    public var parameterNames: [String] { postgresql.sql.parameterNames }

    func form(_ dialect: SQLDialect) -> Form {
        switch dialect {
        case .postgresql: postgresql
        case .sqlite: sqlite
        }
    }
}

// MARK: - SELECT

/// An item of a select list: an expression, and the name it is labeled with.
public struct SelectItem: SQLSelectable {
    let node: SQLNode
    let label: String?
    public var selectItem: SelectItem { self }
}

/// Something that can stand in a select list: any expression, or a labeled one.
public protocol SQLSelectable: Sendable {
    var selectItem: SelectItem { get }
}

extension Column: SQLSelectable {
    public var selectItem: SelectItem { SelectItem(node: node, label: nil) }
}

extension SQLExpression: SQLSelectable {
    public var selectItem: SelectItem { SelectItem(node: node, label: nil) }
}

extension Parameter: SQLSelectable {
    public var selectItem: SelectItem { SelectItem(node: node, label: nil) }
}

/// `SELECT columns…`. Add a table with `from(_:)`.
public func select(_ items: any SQLSelectable...) -> Select { Select(items: items.map(\.selectItem)) }

/// `SELECT columns…` from a list.
public func select(_ items: [any SQLSelectable]) -> Select { Select(items: items.map(\.selectItem)) }

/// `SELECT` every column `schema` declares, in order, from its table.
public func select<Schema: TableSchema>(all schema: Schema.Type) -> Select {
    Select(items: Schema.columns.map { SelectItem(node: SQLNode(.column(qualifier: $0.qualifier, name: $0.definition.name)), label: nil) })
        .from(Schema.table)
}

/// A SELECT statement, built step by step; each step returns a new value.
///
/// ```swift
/// let adults = select(Users.id, Users.name)
///     .from(Users.self)
///     .join(Teams.self, on: Teams.id == Users.teamID)
///     .where(Users.age >= 18 && Teams.name.like("A%"))
///     .orderBy(Users.name.asc())
///     .limit(10)
/// ```
public struct Select: SQLStatement {
    struct Join: Sendable {
        let kind: String
        let table: Table
        let condition: SQLNode
    }

    var items: [SelectItem]
    var isDistinct = false
    var tables: [Table] = []
    var joins: [Join] = []
    var conditions: [SQLNode] = []
    var grouping: [SQLNode] = []
    var havingConditions: [SQLNode] = []
    var ordering: [Ordering] = []
    var limitCount: SQLNode?
    var offsetCount: SQLNode?

    init(items: [SelectItem]) { self.items = items }

    /// `SELECT DISTINCT`.
    public func distinct() -> Select { with { $0.isDistinct = true } }

    /// Adds a table to `FROM`.
    public func from(_ table: Table) -> Select { with { $0.tables.append(table) } }

    /// Adds the table of `schema` to `FROM`.
    public func from<Schema: TableSchema>(_ schema: Schema.Type) -> Select { from(Schema.table) }

    /// `JOIN table ON condition`.
    public func join<C: SQLExpressible>(_ table: Table, on condition: C) -> Select where C.Value.NonOptional == Bool {
        with { $0.joins.append(Join(kind: "JOIN", table: table, condition: condition.node)) }
    }

    /// `JOIN table ON condition`, the table of `schema`.
    public func join<Schema: TableSchema, C: SQLExpressible>(_ schema: Schema.Type, on condition: C) -> Select where C.Value.NonOptional == Bool {
        join(Schema.table, on: condition)
    }

    /// `LEFT JOIN table ON condition`.
    public func leftJoin<C: SQLExpressible>(_ table: Table, on condition: C) -> Select where C.Value.NonOptional == Bool {
        with { $0.joins.append(Join(kind: "LEFT JOIN", table: table, condition: condition.node)) }
    }

    /// `LEFT JOIN table ON condition`, the table of `schema`.
    public func leftJoin<Schema: TableSchema, C: SQLExpressible>(_ schema: Schema.Type, on condition: C) -> Select where C.Value.NonOptional == Bool {
        leftJoin(Schema.table, on: condition)
    }

    /// Adds a `WHERE` condition (several are joined with AND).
    public func `where`<C: SQLExpressible>(_ condition: C) -> Select where C.Value.NonOptional == Bool {
        with { $0.conditions.append(condition.node) }
    }

    /// `GROUP BY expressions…`.
    public func groupBy(_ expressions: any SQLSelectable...) -> Select {
        with { $0.grouping += expressions.map(\.selectItem.node) }
    }

    /// Adds a `HAVING` condition (several are joined with AND).
    public func having<C: SQLExpressible>(_ condition: C) -> Select where C.Value.NonOptional == Bool {
        with { $0.havingConditions.append(condition.node) }
    }

    /// `ORDER BY terms…` (`Users.name.asc()`, `Users.age.desc()`).
    public func orderBy(_ terms: Ordering...) -> Select { with { $0.ordering += terms } }

    /// `LIMIT count` (bound).
    public func limit(_ count: Int) -> Select { with { $0.limitCount = SQLNode(.value(.integer(Int64(count)))) } }

    /// `LIMIT` given at execution as the named parameter `name`.
    public func limit(parameter name: String) -> Select { with { $0.limitCount = SQLNode(.parameter(name)) } }

    /// `OFFSET count` (bound).
    public func offset(_ count: Int) -> Select { with { $0.offsetCount = SQLNode(.value(.integer(Int64(count)))) } }

    private func with(_ change: (inout Select) -> Void) -> Select {
        var copy = self
        change(&copy)
        return copy
    }

    public func render(into sql: inout SQL, _ dialect: SQLDialect) {
        let context = RenderContext(dialect: dialect)
        sql.appendText(isDistinct ? "SELECT DISTINCT " : "SELECT ")
        for (index, item) in items.enumerated() {
            if index > 0 { sql.appendText(", ") }
            item.node.render(into: &sql, context)
            if let label = item.label { sql.appendText(" AS " + SQL.quoted(label)) }
        }
        if !tables.isEmpty {
            sql.appendText(" FROM ")
            for (index, table) in tables.enumerated() {
                if index > 0 { sql.appendText(", ") }
                table.renderReference(into: &sql)
            }
        }
        for join in joins {
            sql.appendText(" \(join.kind) ")
            join.table.renderReference(into: &sql)
            sql.appendText(" ON ")
            join.condition.render(into: &sql, context)
        }
        renderConditions(conditions, keyword: " WHERE ", into: &sql, context)
        if !grouping.isEmpty {
            sql.appendText(" GROUP BY ")
            for (index, node) in grouping.enumerated() {
                if index > 0 { sql.appendText(", ") }
                node.render(into: &sql, context)
            }
        }
        renderConditions(havingConditions, keyword: " HAVING ", into: &sql, context)
        if !ordering.isEmpty {
            sql.appendText(" ORDER BY ")
            for (index, term) in ordering.enumerated() {
                if index > 0 { sql.appendText(", ") }
                term.node.render(into: &sql, context)
                sql.appendText(term.descending ? " DESC" : " ASC")
            }
        }
        if let limitCount {
            sql.appendText(" LIMIT ")
            limitCount.render(into: &sql, context)
        } else if offsetCount != nil, dialect == .sqlite {
            sql.appendText(" LIMIT -1")  // SQLite accepts OFFSET only after a LIMIT
        }
        if let offsetCount {
            sql.appendText(" OFFSET ")
            offsetCount.render(into: &sql, context)
        }
    }
}

/// Conditions joined with AND after `keyword`.
func renderConditions(_ conditions: [SQLNode], keyword: String, into sql: inout SQL, _ context: RenderContext) {
    guard !conditions.isEmpty else { return }
    sql.appendText(keyword)
    let node = conditions.count == 1 ? conditions[0] : logical("AND", conditions)
    node.render(into: &sql, context)
}

/// Renders `RETURNING columns…` with bare column names.
func renderReturning(_ items: [SelectItem], into sql: inout SQL, _ dialect: SQLDialect) {
    guard !items.isEmpty else { return }
    sql.appendText(" RETURNING ")
    let context = RenderContext(dialect: dialect, qualifyColumns: false)
    for (index, item) in items.enumerated() {
        if index > 0 { sql.appendText(", ") }
        item.node.render(into: &sql, context)
        if let label = item.label { sql.appendText(" AS " + SQL.quoted(label)) }
    }
}

// MARK: - INSERT

/// `INSERT INTO` the table of `schema`.
public func insert<Schema: TableSchema>(into schema: Schema.Type) -> Insert { Insert(table: Schema.table) }

/// `INSERT INTO table`.
public func insert(into table: Table) -> Insert { Insert(table: table) }

/// An INSERT of one or many rows, with optional `RETURNING` and `ON CONFLICT`.
///
/// ```swift
/// let id = try await connection.execute(
///     insert(into: Users.self).values(Users.name.set("ann"), Users.age.set(31)).returning(Users.id)
/// ).scalar(Int64.self)
/// ```
public struct Insert: SQLStatement {
    enum Conflict: Sendable {
        case doNothing([String])
        case doUpdate([String], [Assignment])
    }

    let table: Table
    var columns: [String] = []
    var rows: [[SQLNode]] = []
    var returningItems: [SelectItem] = []
    var conflict: Conflict?
    public private(set) var buildError: String?

    init(table: Table) { self.table = table }

    /// Adds a row. Every row names the same columns, in the same order.
    public func values(_ assignments: Assignment...) -> Insert { values(assignments) }

    /// Adds a row from a list of assignments.
    public func values(_ assignments: [Assignment]) -> Insert {
        var copy = self
        let names = assignments.map(\.column)
        if copy.rows.isEmpty {
            copy.columns = names
        } else if names != copy.columns {
            copy.buildError = copy.buildError
                ?? "row \(copy.rows.count + 1) of the insert into '\(table.name)' sets the columns \(names), "
                + "but the first row sets \(copy.columns)"
        }
        copy.rows.append(assignments.map(\.node))
        if names.isEmpty, copy.rows.count > 1 {
            copy.buildError = copy.buildError ?? "an insert into '\(table.name)' of several rows must set at least one column"
        }
        return copy
    }

    /// `RETURNING columns…` (generated keys, defaults).
    public func returning(_ items: any SQLSelectable...) -> Insert {
        var copy = self
        copy.returningItems += items.map(\.selectItem)
        return copy
    }

    /// `ON CONFLICT (columns…) DO NOTHING`.
    public func onConflictDoNothing(_ columns: any AnyColumn...) -> Insert {
        var copy = self
        copy.conflict = .doNothing(columns.map(\.definition.name))
        return copy
    }

    /// `ON CONFLICT (columns…) DO UPDATE SET …` (an upsert). Use ``Column/excluded`` for the value the insert
    /// tried to write: `.onConflict(Users.email, doUpdate: Users.name.set(Users.name.excluded))`.
    public func onConflict(_ columns: any AnyColumn..., doUpdate assignments: Assignment...) -> Insert {
        var copy = self
        copy.conflict = .doUpdate(columns.map(\.definition.name), assignments)
        if assignments.isEmpty { copy.buildError = "an upsert into '\(table.name)' must update at least one column" }
        return copy
    }

    public func render(into sql: inout SQL, _ dialect: SQLDialect) {
        let context = RenderContext(dialect: dialect)
        sql.appendText("INSERT INTO " + SQL.quoted(table.name))
        if rows.isEmpty || columns.isEmpty {
            sql.appendText(" DEFAULT VALUES")
        } else {
            sql.appendText(" (" + columns.map(SQL.quoted).joined(separator: ", ") + ") VALUES ")
            for (rowIndex, row) in rows.enumerated() {
                sql.appendText(rowIndex > 0 ? ", (" : "(")
                for (index, node) in row.enumerated() {
                    if index > 0 { sql.appendText(", ") }
                    node.render(into: &sql, context)
                }
                sql.appendText(")")
            }
        }
        switch conflict {
        case nil: break
        case .doNothing(let target):
            sql.appendText(" ON CONFLICT" + conflictTarget(target) + " DO NOTHING")
        case .doUpdate(let target, let assignments):
            sql.appendText(" ON CONFLICT" + conflictTarget(target) + " DO UPDATE SET ")
            renderAssignments(assignments, into: &sql, context)
        }
        renderReturning(returningItems, into: &sql, dialect)
    }

    private func conflictTarget(_ columns: [String]) -> String {
        columns.isEmpty ? "" : " (" + columns.map(SQL.quoted).joined(separator: ", ") + ")"
    }
}

/// `"a" = …, "b" = …` with bare target names.
func renderAssignments(_ assignments: [Assignment], into sql: inout SQL, _ context: RenderContext) {
    for (index, assignment) in assignments.enumerated() {
        if index > 0 { sql.appendText(", ") }
        sql.appendText(SQL.quoted(assignment.column) + " = ")
        assignment.node.render(into: &sql, context)
    }
}

// MARK: - UPDATE and DELETE

/// `UPDATE` the table of `schema`.
public func update<Schema: TableSchema>(_ schema: Schema.Type) -> Update { Update(table: Schema.table) }

/// `UPDATE table`.
public func update(_ table: Table) -> Update { Update(table: table) }

/// An UPDATE: `set` columns, `where` conditions (several are joined with AND), optional `RETURNING`.
public struct Update: SQLStatement {
    let table: Table
    var assignments: [Assignment] = []
    var conditions: [SQLNode] = []
    var returningItems: [SelectItem] = []

    init(table: Table) { self.table = table }

    /// Sets columns.
    public func set(_ assignments: Assignment...) -> Update {
        var copy = self
        copy.assignments += assignments
        return copy
    }

    /// Adds a `WHERE` condition.
    public func `where`<C: SQLExpressible>(_ condition: C) -> Update where C.Value.NonOptional == Bool {
        var copy = self
        copy.conditions.append(condition.node)
        return copy
    }

    /// `RETURNING columns…`.
    public func returning(_ items: any SQLSelectable...) -> Update {
        var copy = self
        copy.returningItems += items.map(\.selectItem)
        return copy
    }

    public var buildError: String? {
        assignments.isEmpty ? "an update of '\(table.name)' must set at least one column" : nil
    }

    public func render(into sql: inout SQL, _ dialect: SQLDialect) {
        let context = RenderContext(dialect: dialect)
        sql.appendText("UPDATE " + SQL.quoted(table.name) + " SET ")
        renderAssignments(assignments, into: &sql, context)
        renderConditions(conditions, keyword: " WHERE ", into: &sql, context)
        renderReturning(returningItems, into: &sql, dialect)
    }
}

/// `DELETE FROM` the table of `schema`.
public func delete<Schema: TableSchema>(from schema: Schema.Type) -> Delete { Delete(table: Schema.table) }

/// `DELETE FROM table`.
public func delete(from table: Table) -> Delete { Delete(table: table) }

/// A DELETE: `where` conditions (several are joined with AND), optional `RETURNING`.
public struct Delete: SQLStatement {
    let table: Table
    var conditions: [SQLNode] = []
    var returningItems: [SelectItem] = []

    init(table: Table) { self.table = table }

    /// Adds a `WHERE` condition.
    public func `where`<C: SQLExpressible>(_ condition: C) -> Delete where C.Value.NonOptional == Bool {
        var copy = self
        copy.conditions.append(condition.node)
        return copy
    }

    /// `RETURNING columns…`.
    public func returning(_ items: any SQLSelectable...) -> Delete {
        var copy = self
        copy.returningItems += items.map(\.selectItem)
        return copy
    }

    public func render(into sql: inout SQL, _ dialect: SQLDialect) {
        let context = RenderContext(dialect: dialect)
        sql.appendText("DELETE FROM " + SQL.quoted(table.name))
        renderConditions(conditions, keyword: " WHERE ", into: &sql, context)
        renderReturning(returningItems, into: &sql, dialect)
    }
}
