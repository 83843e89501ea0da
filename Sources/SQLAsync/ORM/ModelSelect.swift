/// A query for the objects of a model — every column of its table — with conditions, joins, order, limit
/// and the relationships to load eagerly, run by ``Session/scalars(_:isolation:)``.
///
/// ```swift
/// let books = try await session.scalars(
///     select(Book.self)
///         .where(Books.pages > 100)
///         .orderBy(Books.title.asc())
///         .joined(Book.author)          // same query: LEFT JOIN authors
///         .including(Book.reviews)      // one more query for all the books' reviews
/// )
/// ```
public struct ModelSelect<M: Model> {
    /// The Core statement (every column of `M`'s table, then the columns of joined relationships).
    public private(set) var statement: Select
    var selectin: [any Relationship<M>] = []
    var joins: [JoinedLoad<M>] = []

    init() { statement = select(all: M.Schema.self) }

    private func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }

    /// `WHERE condition` (conditions added by several calls are ANDed).
    public func `where`<C: SQLExpressible>(_ condition: C) -> Self where C.Value.NonOptional == Bool {
        with { $0.statement = $0.statement.where(condition) }
    }

    /// `JOIN table ON condition`, to filter or order by another table's columns (its columns are not
    /// loaded: `joined(_:)` loads a relationship).
    public func join<Schema: TableSchema, C: SQLExpressible>(_ schema: Schema.Type, on condition: C) -> Self
    where C.Value.NonOptional == Bool {
        with { $0.statement = $0.statement.join(schema, on: condition) }
    }

    /// `ORDER BY …`.
    public func orderBy(_ terms: Ordering...) -> Self {
        with { $0.statement.ordering += terms }
    }

    /// `LIMIT count`.
    public func limit(_ count: Int) -> Self { with { $0.statement = $0.statement.limit(count) } }

    /// `OFFSET count`.
    public func offset(_ count: Int) -> Self { with { $0.statement = $0.statement.offset(count) } }

    /// Loads `relationships` of the objects with one more query each (`selectin`).
    public func including(_ relationships: any Relationship<M>...) -> Self {
        with { $0.selectin += relationships }
    }

    /// Loads a many-to-one relationship in the same query (`LEFT JOIN` of the parent's table).
    public func joined<Parent: Model, Key: SQLColumnValue>(_ relationship: ToOne<M, Parent, Key>) -> Self {
        with { query in
            let start = query.leftJoin(Parent.self, column: relationship.parentKey.name, equals: relationship.childKey.node)
            query.joins.append(JoinedLoad(isToMany: false) { session, result, owners, ownerOfRow in
                let (keyIndexes, columns) = JoinedLoad<M>.layout(Parent.self, result, start)
                var parents: [Parent?] = Array(repeating: nil, count: owners.count)
                for (index, row) in result.enumerated() {
                    guard let owner = ownerOfRow[index] else { continue }
                    parents[owner] = try session.materializeSlice(Parent.self, row, start: start, columns: columns, keyIndexes: keyIndexes)
                }
                for (owner, parent) in zip(owners, parents) { relationship.set(parent, on: owner, in: session) }
            })
        }
    }

    /// Loads a one-to-many relationship in the same query (`LEFT JOIN` of the children's table: a parent's
    /// row repeats for each child). ``limit(_:)`` and ``offset(_:)`` would count those rows, not parents, so
    /// they are refused with it: load the children with ``including(_:)`` instead.
    public func joined<Child: Model, Key: SQLColumnValue>(_ relationship: ToMany<M, Child, Key>) -> Self {
        with { query in
            let start = query.leftJoin(Child.self, column: relationship.childKey.name, equals: relationship.parentKey.node)
            query.joins.append(JoinedLoad(isToMany: true) { session, result, owners, ownerOfRow in
                let (keyIndexes, columns) = JoinedLoad<M>.layout(Child.self, result, start)
                var children: [[Child]] = Array(repeating: [], count: owners.count)
                var seen: [Set<ObjectIdentifier>] = Array(repeating: [], count: owners.count)
                for (index, row) in result.enumerated() {
                    guard let owner = ownerOfRow[index],
                        let child = try session.materializeSlice(Child.self, row, start: start, columns: columns, keyIndexes: keyIndexes),
                        seen[owner].insert(ObjectIdentifier(child)).inserted
                    else { continue }
                    children[owner].append(child)
                }
                for (owner, list) in zip(owners, children) { relationship.set(list, on: owner, in: session) }
            })
        }
    }

    /// `LEFT JOIN` of `T`'s table under an alias of its own, on `alias.column = other`, with every column of
    /// it appended to the select list; returns the position of its first column.
    private mutating func leftJoin<T: Model>(_ type: T.Type, column: String, equals other: SQLNode) -> Int {
        let alias = "anyruntime_j\(joins.count)"
        let start = statement.items.count
        for (index, column) in T.Schema.columns.enumerated() {
            statement.items.append(SelectItem(
                node: SQLNode(.column(qualifier: alias, name: column.definition.name)), label: "\(alias)_\(index)"))
        }
        statement.joins.append(Select.Join(
            kind: "LEFT JOIN", table: T.Schema.table.aliased(alias),
            condition: SQLNode(.binary(SQLNode(.column(qualifier: alias, name: column)), "=", other))))
        return start
    }
}

/// A query for every object of `model`'s table: refine it with `where`, `orderBy`, `limit`, eager loading,
/// and run it with ``Session/scalars(_:isolation:)``.
public func select<M: Model>(_ model: M.Type) -> ModelSelect<M> { ModelSelect() }

/// A relationship loaded in the main query: what to do with the joined columns of the result.
struct JoinedLoad<Owner: Model> {
    let isToMany: Bool
    /// Sets the relationship of each owner from the result (`ownerOfRow`: the owner index of each row).
    let assign: (Session, QueryResult, [Owner], [Int?]) throws -> Void

    /// Where the joined model's key columns are in the result, and its column names (for its own rows).
    static func layout<T: Model>(_ type: T.Type, _ result: QueryResult, _ start: Int) -> ([Int?], [String]) {
        let columns = T.Schema.columns.map(\.definition.name)
        let keyIndexes = T.Schema.table.primaryKey.map { name in columns.firstIndex(of: name).map { $0 + start } }
        return (keyIndexes, columns)
    }
}

extension Session {
    /// The objects of a model query, through the identity map, with its eager loads done. Flushes first when
    /// ``autoflush`` is on.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for a one-to-many `joined(_:)` with a limit or
    ///   offset; the query's ``SQLError``.
    public func scalars<M: Model>(_ query: ModelSelect<M>, isolation: isolated (any Actor)? = #isolation) async throws -> [M] {
        if query.joins.contains(where: \.isToMany) && (query.statement.limitCount != nil || query.statement.offsetCount != nil) {
            throw SQLError(.misuse, "a one-to-many relationship loaded with joined() cannot be combined with limit or offset (they would count joined rows); load it with including()")
        }
        if autoflush { try await flush() }
        let owners: [M]
        if query.joins.isEmpty {
            owners = try await fetch(query.statement, as: M.self)
        } else {
            owners = try await fetchJoined(query)
        }
        for relationship in query.selectin { try await relationship.load(owners, in: self, isolation: isolation) }
        return owners
    }

    /// The first object of a model query, or `nil`.
    public func scalar<M: Model>(_ query: ModelSelect<M>, isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        // (A one-to-many joined into the query repeats the row: no LIMIT then.)
        try await scalars(query.joins.contains(where: \.isToMany) ? query : query.limit(1)).first
    }

    private func fetchJoined<M: Model>(_ query: ModelSelect<M>, isolation: isolated (any Actor)? = #isolation) async throws -> [M] {
        try await beginIfNeeded()
        let result = try await connection.execute(query.statement)
        let info = info(M.self)
        let keyIndexes = info.table.primaryKey.map { result.columns.firstIndex(of: $0) }
        try Self.checkKeyColumns(M.self, info, keyIndexes)
        let ownColumns = M.Schema.columns.count
        var owners: [M] = []
        var indexOf: [ObjectIdentifier: Int] = [:]
        var ownerOfRow: [Int?] = []
        ownerOfRow.reserveCapacity(result.count)
        let ownNames = Array(result.columns.prefix(ownColumns))
        for row in result {
            // The owner's own columns come first: decoded from a row of those alone.
            let own = Row(columns: ownNames, values: Array(row.values.prefix(ownColumns)))
            guard let owner = try materialize(M.self, own, info: info, keyIndexes: keyIndexes) else {
                ownerOfRow.append(nil)
                continue
            }
            if let index = indexOf[ObjectIdentifier(owner)] {
                ownerOfRow.append(index)
            } else {
                indexOf[ObjectIdentifier(owner)] = owners.count
                ownerOfRow.append(owners.count)
                owners.append(owner)
            }
        }
        for load in query.joins { try load.assign(self, result, owners, ownerOfRow) }
        return owners
    }

    /// The object of type `T` in columns `start…` of a joined row (nil when its key is NULL: no match).
    func materializeSlice<T: Model>(_ type: T.Type, _ row: Row, start: Int, columns: [String], keyIndexes: [Int?]) throws -> T? {
        let key = keyIndexes.map { $0.flatMap { row[$0] } ?? .null }
        if key.isEmpty || key.contains(.null) { return nil }
        let values = (start..<start + columns.count).map { row[$0] ?? .null }
        let own = Row(columns: columns, values: values)
        return try materialize(T.self, own, info: info(T.self), keyIndexes: keyIndexes.map { $0.map { $0 - start } })
    }
}
