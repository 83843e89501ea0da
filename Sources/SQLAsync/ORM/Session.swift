/// A unit of work over one connection: objects loaded or added are tracked by primary key (one object per key:
/// the identity map), their changes are written at ``flush(isolation:)`` — inserts parents first, updates of the changed
/// columns only, deletes children first — inside the session's transaction, which ``commit(isolation:)`` ends.
///
/// One session per task (it is not `Sendable`); ``Engine/withSession(isolation:_:)`` scopes one.
///
/// ```swift
/// try await engine.withSession { session in
///     let ada = User(name: "Ada")
///     session.add(ada)
///     try await session.flush()                      // INSERT … RETURNING: ada.id is set
///     let same = try await session.get(User.self, ada.id)   // no query: the identity map has it
///     same?.name = "Ada L."                          // UPDATE of "name" only, at the next flush
/// }                                                  // commits; rolls back on error or cancellation
/// ```
public final class Session {
    /// The connection the session works on.
    public let connection: Connection
    private var transaction: Transaction?
    private var tracked: [Tracked] = []
    private var byKey: [IdentityKey: Tracked] = [:]
    private var byObject: [ObjectIdentifier: Tracked] = [:]

    /// Whether queries flush pending changes first (default: on).
    public var autoflush = true

    public init(connection: Connection) { self.connection = connection }

    // MARK: Tracking

    /// Adds a new object: it is inserted at the next flush. Adding a tracked object does nothing.
    public func add<M: Model>(_ object: M) {
        guard byObject[ObjectIdentifier(object)] == nil else { return }
        let entry = Tracked(object, table: M.Schema.table, snapshot: nil)
        tracked.append(entry)
        byObject[ObjectIdentifier(object)] = entry
    }

    /// Adds several new objects.
    public func addAll<M: Model>(_ objects: [M]) { for object in objects { add(object) } }

    /// Marks a tracked object for deletion at the next flush (a new one is simply forgotten).
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the session does not track the object.
    public func delete<M: Model>(_ object: M) throws(SQLError) {
        guard let entry = byObject[ObjectIdentifier(object)] else {
            throw SQLError(.misuse, "delete: the session does not track this \(M.self)")
        }
        if entry.snapshot == nil { forget(entry) } else { entry.deleted = true }
    }

    /// Stops tracking an object: later changes to it are not written.
    public func expunge<M: Model>(_ object: M) {
        if let entry = byObject[ObjectIdentifier(object)] { forget(entry) }
    }

    private func forget(_ entry: Tracked) {
        tracked.removeAll { $0 === entry }
        byObject[ObjectIdentifier(entry.object)] = nil
        if let key = entry.key { byKey[key] = nil }
    }

    // MARK: Loading

    /// The object with primary key `key` (one column), from the identity map when loaded, else from the
    /// database; `nil` when there is none.
    public func get<M: Model>(_ type: M.Type, _ key: some SQLBindable, isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        try await get(type, key: [key.sqlValue])
    }

    /// The object with the composite primary key `key` (values in the order of the key's columns).
    public func get<M: Model>(_ type: M.Type, key: [SQLValue], isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        let table = M.Schema.table
        let names = table.primaryKey
        guard names.count == key.count, !names.isEmpty else {
            throw SQLError(.misuse, "\(M.self) has a primary key of \(names.count) columns; \(key.count) values were given")
        }
        if let entry = byKey[IdentityKey(M.self, key)], !entry.deleted, let object = entry.object as? M { return object }
        var query = select(all: M.Schema.self)
        query.conditions.append(Self.keyCondition(table, names, key))
        return try await objects(query, as: M.self).first
    }

    /// The objects a query returns (select every column of `M`'s table: ``select(all:)``), through the
    /// identity map: an object already loaded comes back as it is, unsaved changes included.
    public func objects<M: Model>(_ query: Select, as type: M.Type, isolation: isolated (any Actor)? = #isolation) async throws -> [M] {
        if autoflush { try await flush() }
        try await beginIfNeeded()
        let result = try await connection.execute(query)
        let table = M.Schema.table
        // The key columns' positions, found once for the whole result.
        let keyIndexes = table.primaryKey.map { result.columns.firstIndex(of: $0) }
        var objects: [M] = []
        objects.reserveCapacity(result.count)
        tracked.reserveCapacity(tracked.count + result.count)
        for row in result {
            let key = IdentityKey(M.self, keyIndexes.map { $0.flatMap { row[$0] } ?? .null })
            if let entry = byKey[key], let object = entry.object as? M {
                if !entry.deleted { objects.append(object) }
                continue
            }
            let object = try M(row: row)
            let entry = Tracked(object, table: table, snapshot: object.encoded())
            entry.key = key
            tracked.append(entry)
            byObject[ObjectIdentifier(object)] = entry
            byKey[key] = entry
            objects.append(object)
        }
        return objects
    }

    /// The tracked object of type `M` with primary key `key`, if any (no query).
    func tracked<M: Model>(_ type: M.Type, key: [SQLValue]) -> M? {
        guard let entry = byKey[IdentityKey(M.self, key)], !entry.deleted else { return nil }
        return entry.object as? M
    }

    // MARK: Writing

    /// Writes every pending change: inserts (parents before children), updates of the changed columns,
    /// deletes (children before parents), in the session's transaction.
    ///
    /// - Throws: the failing statement's ``SQLError``; the transaction is then rolled back and the session
    ///   cleared (its objects detached), so that it is in a known state.
    public func flush(isolation: isolated (any Actor)? = #isolation) async throws {
        let inserts = tracked.filter { $0.snapshot == nil }
        let deletes = tracked.filter { $0.deleted }
        let updates = tracked.filter { $0.snapshot != nil && !$0.deleted }.compactMap { entry -> (Tracked, [String])? in
            let changed = entry.encode().changedNames(since: entry.snapshot ?? ColumnValues())
            return changed.isEmpty ? nil : (entry, changed)
        }
        guard !inserts.isEmpty || !deletes.isEmpty || !updates.isEmpty else { return }
        try await beginIfNeeded()
        let order = try Metadata(tables: Array(Set(tracked.map(\.table.name))).compactMap { name in
            tracked.first { $0.table.name == name }?.table
        }).sortedTables().map(\.name)
        do {
            for name in order {
                try await insert(inserts.filter { $0.table.name == name })
            }
            for (entry, changed) in updates { try await update(entry, changed) }
            for name in order.reversed() {
                for entry in deletes where entry.table.name == name { try await delete(entry) }
            }
        } catch {
            await rollback()
            throw error
        }
    }

    /// Inserts new objects of one table: objects that set the same columns go in one batch (`executeMany`:
    /// PostgreSQL pipeline mode, one round trip), each returning its row — generated keys and defaults — in
    /// order.
    private func insert(_ entries: [Tracked], isolation: isolated (any Actor)? = #isolation) async throws {
        guard let table = entries.first?.table else { return }
        // A NULL in an auto-incremented column lets the database generate it.
        let generated = Set(table.columns.filter(\.isAutoIncrement).map(\.name))
        var batches: [[String]: [(Tracked, [SQLValue])]] = [:]
        var order: [[String]] = []
        for entry in entries {
            let values = entry.encode()
            var names: [String] = []
            var row: [SQLValue] = []
            for (name, value) in zip(values.names, values.values) where !(value == .null && generated.contains(name)) {
                names.append(name)
                row.append(value)
            }
            if batches[names] == nil { order.append(names) }
            batches[names, default: []].append((entry, row))
        }
        let returning = table.columns.map { SelectItem(node: SQLNode(.column(qualifier: nil, name: $0.name)), label: nil) }
        for names in order {
            guard let batch = batches[names] else { continue }
            var statement = SQLAsync.insert(into: table)
                .values(names.map { Assignment(column: $0, node: SQLNode(.parameter($0))) })
            statement.returningItems = returning
            // Each column is one placeholder, in the order of `names`: the values go in as they are, positionally.
            let text = try statement.sql(for: connection.dialect).text(placeholders: connection.dialect.placeholderStyle)
            let result: QueryResult
            if batch.count == 1 {
                result = try await connection.execute(text: text, binds: batch[0].1)
            } else {
                result = try await connection.executeMany(text: text, sets: batch.map(\.1))
            }
            guard result.count == batch.count else {
                throw SQLError(.database, "inserting \(batch.count) \(table.name) rows returned \(result.count)")
            }
            for ((entry, _), row) in zip(batch, result) {
                try entry.didInsert(row)
                entry.snapshot = entry.encode()
                let key = IdentityKey(entry.type, table.primaryKey.map { row[$0] ?? .null })
                entry.key = key
                byKey[key] = entry
            }
        }
    }

    private func update(_ entry: Tracked, _ changed: [String], isolation: isolated (any Actor)? = #isolation) async throws {
        let values = entry.encode()
        guard let snapshot = entry.snapshot else { return }
        var statement = SQLAsync.update(entry.table)
        let version = entry.versionColumn
        statement.assignments = changed.filter { $0 != version }.map { Assignment(column: $0, node: SQLNode(.value(values[$0] ?? .null))) }
        let names = entry.table.primaryKey
        statement.conditions.append(Self.keyCondition(entry.table, names, names.map { snapshot[$0] ?? .null }))
        if let version {
            // Optimistic concurrency: only the version this object read, and the next one written.
            let column = SQLNode(.column(qualifier: entry.table.reference, name: version))
            statement.assignments.append(Assignment(column: version, node: SQLNode(.binary(column, "+", SQLNode(.value(.integer(1)))))))
            statement.conditions.append(SQLNode(.binary(column, "=", SQLNode(.value(snapshot[version] ?? .null)))))
            statement.returningItems = [SelectItem(node: SQLNode(.column(qualifier: nil, name: version)), label: nil)]
        }
        let result = try await connection.execute(statement)
        guard result.rowsAffected == 1 else {
            throw SQLError(
                .staleData,
                version == nil
                    ? "the \(entry.table.name) row being updated is gone"
                    : "the \(entry.table.name) row was changed or deleted since it was read (its version moved on)")
        }
        if version != nil, let row = result.first() { try entry.didUpdate(row) }
        entry.snapshot = entry.encode()
    }

    private func delete(_ entry: Tracked, isolation: isolated (any Actor)? = #isolation) async throws {
        guard let snapshot = entry.snapshot else { return }
        var statement = SQLAsync.delete(from: entry.table)
        let names = entry.table.primaryKey
        statement.conditions.append(Self.keyCondition(entry.table, names, names.map { snapshot[$0] ?? .null }))
        try await connection.execute(statement)
        forget(entry)
    }

    /// `k1 = v1 AND k2 = v2…`, every value bound.
    static func keyCondition(_ table: Table, _ names: [String], _ key: [SQLValue]) -> SQLNode {
        let parts = zip(names, key).map { name, value in
            SQLNode(.binary(SQLNode(.column(qualifier: table.reference, name: name)), "=", SQLNode(.value(value))))
        }
        return parts.count == 1 ? parts[0] : logical("AND", parts)
    }

    // MARK: Transaction

    private func beginIfNeeded(isolation: isolated (any Actor)? = #isolation) async throws {
        if transaction == nil { transaction = try await connection.begin() }
    }

    /// Flushes, then commits the session's transaction.
    public func commit(isolation: isolated (any Actor)? = #isolation) async throws {
        try await flush()
        guard let transaction else { return }
        self.transaction = nil
        try await transaction.commit()
    }

    /// Rolls the session's transaction back and detaches every object (their state in the database is no
    /// longer known). Shielded from cancellation.
    public func rollback(isolation: isolated (any Actor)? = #isolation) async {
        if let transaction {
            self.transaction = nil
            try? await transaction.rollback()
        }
        tracked.removeAll()
        byKey.removeAll()
        byObject.removeAll()
    }

    // MARK: Bookkeeping

    struct IdentityKey: Hashable {
        /// A one-column key (the usual case) without an array.
        enum Value: Hashable {
            case one(SQLValue)
            case many([SQLValue])
        }

        let type: ObjectIdentifier
        let key: Value
        init(_ type: Any.Type, _ key: [SQLValue]) {
            self.type = ObjectIdentifier(type)
            self.key = key.count == 1 ? .one(key[0]) : .many(key)
        }
    }

    /// One tracked object, with its model's operations erased to closures.
    final class Tracked {
        let object: AnyObject
        let type: Any.Type
        let table: Table
        private let operations: any ModelOperations
        var versionColumn: String? { operations.versionColumn }
        /// The values last read or written; nil for an object still to insert.
        var snapshot: ColumnValues?
        var key: IdentityKey?
        var deleted = false

        /// - Parameter table: `M.Schema.table`, computed once by the caller for many objects (building it
        ///   per object would cost more than the rest of the bookkeeping).
        init<M: Model>(_ object: M, table: Table, snapshot: ColumnValues?) {
            self.object = object
            type = M.self
            self.table = table
            operations = Operations<M>()
            self.snapshot = snapshot
        }

        func encode() -> ColumnValues { operations.encode(object) }
        func didInsert(_ row: Row) throws { try operations.didInsert(object, row) }
        func didUpdate(_ row: Row) throws { try operations.didUpdate(object, row) }
    }
}

/// A model type's operations on a tracked object, without a closure (and its allocation) per object.
protocol ModelOperations {
    var versionColumn: String? { get }
    func encode(_ object: AnyObject) -> ColumnValues
    func didInsert(_ object: AnyObject, _ row: Row) throws
    func didUpdate(_ object: AnyObject, _ row: Row) throws
}

struct Operations<M: Model>: ModelOperations {
    var versionColumn: String? { M.versionColumn?.name }
    // `unsafeDowncast`: a Tracked entry is created only with an `M` and its `Operations<M>` together.
    func encode(_ object: AnyObject) -> ColumnValues { unsafeDowncast(object, to: M.self).encoded() }
    func didInsert(_ object: AnyObject, _ row: Row) throws { try unsafeDowncast(object, to: M.self).didInsert(row) }
    func didUpdate(_ object: AnyObject, _ row: Row) throws { try unsafeDowncast(object, to: M.self).didUpdate(row) }
}

extension Model {
    func encoded() -> ColumnValues {
        var values = ColumnValues(capacity: Schema.columns.count)
        encode(to: &values)
        return values
    }
}

extension Engine {
    /// A session on a pooled connection: committed when `body` returns, rolled back when it throws or is
    /// cancelled; the connection goes back to the pool either way.
    @discardableResult
    public func withSession<T>(isolation: isolated (any Actor)? = #isolation, _ body: (Session) async throws -> T) async throws -> T {
        try await withConnection { connection in
            let session = Session(connection: connection)
            do {
                let result = try await body(session)
                try await session.commit()
                return result
            } catch {
                await session.rollback()
                throw error
            }
        }
    }
}
