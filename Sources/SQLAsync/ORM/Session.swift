/// A unit of work over one connection: objects loaded or added are tracked by primary key (one object per key:
/// the identity map), their changes are written at ``flush(isolation:)`` — inserts parents first, updates of the
/// changed columns only, deletes children first, each kind batched — inside the session's transaction, which
/// ``commit(isolation:)`` ends.
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
    /// Every tracked object, in the order it was tracked. A forgotten entry is flagged `detached` and dropped
    /// from this array at the next flush (removing it at once would make deleting n objects O(n²)).
    private var tracked: [Tracked] = []
    private var detachedCount = 0
    private var byKey: [IdentityKey: Tracked] = [:]
    /// The entries by object, for `tracked[..<indexedCount]`: objects loaded by a query are indexed only when
    /// a lookup by object needs them (a read-only session never pays for it).
    private var byObject: [ObjectIdentifier: Tracked] = [:]
    private var indexedCount = 0
    /// Objects deleted by a flush of this session (held, so that their identifiers stay theirs).
    private var deletedObjects: [ObjectIdentifier: AnyObject] = [:]
    /// What the session knows of each model type it met.
    private var models: [ObjectIdentifier: ModelInfo] = [:]
    private var savepointDepth = 0
    private var vacancyMarker: Tracked?
    /// During a flush: the objects live owners' loaded relationships hold.
    private(set) var held = Set<ObjectIdentifier>()

    /// Whether queries flush pending changes first (default: on).
    public var autoflush = true

    /// Keys per `IN` list when relationships are loaded: SQLite allows 32,766 parameters in a statement,
    /// PostgreSQL 65,535; more keys take more queries.
    var inListLimit = 10_000

    public init(connection: Connection) { self.connection = connection }

    // MARK: Tracking

    /// Adds a new object: it is inserted at the next flush, with the objects its relationships hold (the
    /// save-update cascade). Adding a tracked object does nothing.
    public func add<M: Model>(_ object: M) {
        _ = track(object)
    }

    /// Adds several new objects.
    public func addAll<M: Model>(_ objects: [M]) {
        let info = info(M.self)
        indexAll()
        tracked.reserveCapacity(tracked.count + objects.count)
        byObject.reserveCapacity(byObject.count + objects.count)
        for object in objects where byObject[ObjectIdentifier(object)] == nil {
            let entry = Tracked(object, info, snapshot: nil)
            tracked.append(entry)
            byObject[ObjectIdentifier(object)] = entry
        }
        indexedCount = tracked.count
    }

    /// The session's record of model type `M` (made once per type).
    func info<M: Model>(_ type: M.Type) -> ModelInfo {
        if let info = models[ObjectIdentifier(M.self)] { return info }
        let info = ModelInfo(M.self)
        models[ObjectIdentifier(M.self)] = info
        return info
    }

    /// Indexes by object the entries that are not yet.
    private func indexAll() {
        guard indexedCount < tracked.count else { return }
        for entry in tracked[indexedCount...] where !entry.detached { byObject[ObjectIdentifier(entry.object)] = entry }
        indexedCount = tracked.count
    }

    /// The entry of a tracked object.
    func entry(for object: AnyObject) -> Tracked? {
        indexAll()
        return byObject[ObjectIdentifier(object)]
    }

    /// Drops forgotten entries from `tracked`, keeping the indexed ones a prefix.
    private func compact() {
        guard detachedCount > 0 else { return }
        var kept: [Tracked] = []
        kept.reserveCapacity(tracked.count - min(detachedCount, tracked.count))
        var indexed = 0
        for (index, entry) in tracked.enumerated() where !entry.detached {
            if index < indexedCount { indexed += 1 }
            kept.append(entry)
        }
        tracked = kept
        indexedCount = indexed
        detachedCount = 0
    }

    /// Tracks a new object; returns whether it was new to the session.
    @discardableResult
    func track<M: Model>(_ object: M) -> Bool {
        // A deleted object still held by a relationship is not brought back by the save-update cascade.
        guard entry(for: object) == nil, deletedObjects[ObjectIdentifier(object)] == nil else { return false }
        let entry = Tracked(object, info(M.self), snapshot: nil)
        tracked.append(entry)
        byObject[ObjectIdentifier(object)] = entry
        indexedCount = tracked.count
        return true
    }

    /// Marks a tracked object for deletion at the next flush (a new one is simply forgotten), with the
    /// objects its relationships cascade deletes to.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the session does not track the object.
    public func delete<M: Model>(_ object: M) throws(SQLError) {
        guard let entry = entry(for: object) else {
            throw SQLError(.misuse, "delete: the session does not track this \(M.self)")
        }
        markDeleted(entry)
    }

    func markDeleted(_ entry: Tracked) {
        if entry.snapshot == nil { forget(entry) } else { entry.deleted = true }
    }

    /// Whether the session tracks `object` (and it is not deleted).
    public func contains<M: Model>(_ object: M) -> Bool {
        entry(for: object).map { !$0.deleted } ?? false
    }

    /// Stops tracking an object: later changes to it are not written.
    public func expunge<M: Model>(_ object: M) {
        if let entry = entry(for: object) { forget(entry) }
    }

    private func forget(_ entry: Tracked) {
        guard !entry.detached else { return }
        entry.detached = true
        detachedCount += 1
        byObject[ObjectIdentifier(entry.object)] = nil
        if let key = entry.key, byKey[key] === entry { byKey[key] = nil }
    }


    // MARK: Loading

    /// The object with primary key `key` (one column), from the identity map when loaded, else from the
    /// database; `nil` when there is none.
    public func get<M: Model>(_ type: M.Type, _ key: some SQLBindable, isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        try await get(type, key: [key.sqlValue])
    }

    /// The object with the composite primary key `key` (values in the order of the key's columns).
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when `key` has not as many values as the primary key has columns.
    public func get<M: Model>(_ type: M.Type, key: [SQLValue], isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        let table = M.Schema.table
        let names = try Self.checkKey(M.self, table, key)
        if let entry = byKey[IdentityKey(M.self, key)], !entry.deleted, let object = entry.object as? M { return object }
        var query = select(all: M.Schema.self)
        query.conditions.append(Self.keyCondition(table, names, key))
        return try await objects(query, as: M.self).first
    }

    /// The objects a query returns (select every column of `M`'s table: ``select(all:)``), through the
    /// identity map: an object already loaded comes back as it is, unsaved changes included.
    public func objects<M: Model>(_ query: Select, as type: M.Type, isolation: isolated (any Actor)? = #isolation) async throws -> [M] {
        if autoflush { try await flush() }
        return try await fetch(query, as: type)
    }

    /// ``objects(_:as:isolation:)`` without the autoflush (for loads the session runs itself).
    func fetch<M: Model>(_ query: Select, as type: M.Type, isolation: isolated (any Actor)? = #isolation) async throws -> [M] {
        try await beginIfNeeded()
        let result = try await connection.execute(query)
        let info = info(M.self)
        // The key columns' positions, found once for the whole result.
        let keyIndexes = info.table.primaryKey.map { result.columns.firstIndex(of: $0) }
        try Self.checkKeyColumns(M.self, info, keyIndexes)
        var objects: [M] = []
        objects.reserveCapacity(result.count)
        tracked.reserveCapacity(tracked.count + result.count)
        byKey.reserveCapacity(byKey.count + result.count)
        for row in result {
            if let object = try materialize(M.self, row, info: info, keyIndexes: keyIndexes) { objects.append(object) }
        }
        return objects
    }

    /// The tracked object for a row (the one already in the identity map, or a new one); nil when the
    /// object was deleted in this session.
    func materialize<M: Model>(_ type: M.Type, _ row: Row, info: ModelInfo, keyIndexes: [Int?]) throws -> M? {
        let key = IdentityKey(M.self, row: row, keyIndexes)
        if key.hasNull { throw SQLError(.misuse, "a \(M.self) row has a NULL primary key") }
        // One hash and probe per row: the slot is claimed with the vacancy marker, then filled in place.
        let vacancy = vacancy(info)
        do {
            return try Self.fill(&byKey[key, default: vacancy]) { slot -> M? in
                guard slot === vacancy else { return slot.deleted ? nil : slot.object as? M }
                let object = try M(row: row)
                // The row is the snapshot as it is (no encoding per object loaded); it is compared in the model's
                // own encoding only if the object's values ever differ from it.
                let entry = Tracked(object, info, snapshot: ColumnValues(row))
                entry.canonical = false
                entry.key = key
                slot = entry
                tracked.append(entry)  // indexed by object when a lookup needs it
                return object
            }
        } catch {
            if byKey[key] === vacancy { byKey[key] = nil }
            throw error
        }
    }

    /// The marker of an identity-map slot being filled by ``materialize(_:_:info:keyIndexes:)`` (never tracked).
    private func vacancy(_ info: ModelInfo) -> Tracked {
        if let vacancyMarker { return vacancyMarker }
        let marker = Tracked(info, info, snapshot: nil)
        vacancyMarker = marker
        return marker
    }

    @inline(__always)
    private static func fill<T>(_ slot: inout Tracked, _ body: (inout Tracked) throws -> T) rethrows -> T { try body(&slot) }

    /// The tracked object of type `M` with primary key `key`, if any (no query).
    func tracked<M: Model>(_ type: M.Type, key: [SQLValue]) -> M? {
        guard let entry = byKey[IdentityKey(M.self, key)], !entry.deleted else { return nil }
        return entry.object as? M
    }

    /// Reloads every column of a tracked object from the database, discarding its unsaved changes (its
    /// relationships stay as they are).
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for an object the session does not track or has not inserted yet;
    ///   ``SQLError/Kind/staleData`` when its row is gone.
    public func refresh<M: Model>(_ object: M, isolation: isolated (any Actor)? = #isolation) async throws {
        guard let entry = entry(for: object), !entry.deleted else {
            throw SQLError(.misuse, "refresh: the session does not track this \(M.self)")
        }
        guard let snapshot = entry.snapshot else {
            throw SQLError(.misuse, "refresh: this \(M.self) is not in the database yet (flush first)")
        }
        let table = M.Schema.table
        let names = table.primaryKey
        var query = select(all: M.Schema.self)
        query.conditions.append(Self.keyCondition(table, names, names.map { snapshot[$0] ?? .null }))
        try await beginIfNeeded()
        guard let row = try await connection.execute(query).first() else {
            throw SQLError(.staleData, "refresh: the \(table.name) row of this \(M.self) is gone")
        }
        try object.update(from: row)
        entry.snapshot = object.encoded()
        entry.canonical = true
    }

    /// The session's object for `object`'s primary key, with `object`'s column values copied onto it: the
    /// tracked one, or the one in the database (loaded), or — when there is none — `object` itself, added
    /// as new. `object` is not tracked by the merge (unless it is the one added).
    ///
    /// Use it for an object built or decoded outside the session (a request body, another session's object).
    public func merge<M: Model>(_ object: M, isolation: isolated (any Actor)? = #isolation) async throws -> M {
        if let entry = entry(for: object), !entry.deleted { return object }
        let values = object.encoded()
        let table = M.Schema.table
        let key = table.primaryKey.map { values[$0] ?? .null }
        guard !key.isEmpty, !key.contains(.null) else {
            add(object)
            return object
        }
        if let existing = try await get(M.self, key: key) {
            try existing.update(from: values.row)
            return existing
        }
        add(object)
        return object
    }

    // MARK: Writing

    /// Writes every pending change, in the session's transaction: the relationships' cascades first (objects
    /// they hold are added, orphans deleted, deletes cascaded — loading children when needed), then inserts
    /// (parents before children, foreign keys set from the parents' new keys), updates of the changed
    /// columns, many-to-many association rows, deletes (children before parents). Inserts, updates and
    /// deletes of one table are batched (PostgreSQL: one pipelined round trip per batch).
    ///
    /// - Throws: the failing statement's ``SQLError``; the transaction (inside
    ///   ``withSavepoint(isolation:_:)``: the savepoint) is then rolled back and the session cleared (its
    ///   objects detached), so that it is in a known state.
    public func flush(isolation: isolated (any Actor)? = #isolation) async throws {
        compact()
        let withRelationships = models.values.contains { $0.hasRelationships }
        do {
            if withRelationships {
                try prepareRelationships()
                try await cascadeDeletes()
            }
            let inserts = tracked.filter { $0.snapshot == nil && !$0.detached }
            // Without inserts no key changes, so what changed is known now (foreign keys set first).
            if inserts.isEmpty && withRelationships { try synchronizeKeys() }
            var updates = inserts.isEmpty ? dirtyEntries() : nil
            let deletes = tracked.filter { $0.deleted && !$0.detached }
            let links = withRelationships ? try linkChanges() : []
            if inserts.isEmpty && deletes.isEmpty && updates?.isEmpty == true && links.isEmpty { return }
            try await beginIfNeeded()
            let order = try tableOrder(inserts + deletes)
            for name in order {
                let entries = order.count == 1 ? inserts : inserts.filter { $0.table.name == name }
                guard !entries.isEmpty else { continue }
                // Rows of a table that references itself (a tree) go in parents first, a level at a time.
                for level in try Self.insertLevels(entries) {
                    if withRelationships { try synchronizeKeys() }
                    try await insert(level)
                }
            }
            if updates == nil {
                if withRelationships { try synchronizeKeys() }
                updates = dirtyEntries()
            }
            try await update(updates ?? [])
            for change in links { try await change.write(self) }
            for name in order.reversed() {
                let entries = order.count == 1 ? deletes : deletes.filter { $0.table.name == name }
                for level in try Self.deleteLevels(entries) { try await delete(level) }
            }
            if withRelationships { recordRelationships() }
        } catch {
            // Inside a savepoint, the savepoint is rolled back (by `withSavepoint`), not the transaction.
            if savepointDepth == 0 { await rollback() }
            throw error
        }
    }

    /// The tables of the objects to insert or delete, parents before children.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for a table without a primary key (the session could not tell its
    ///   rows apart), or a cycle of foreign keys among them.
    private func tableOrder(_ entries: [Tracked]) throws(SQLError) -> [String] {
        var tables: [String: Table] = [:]
        var previous: ModelInfo?
        for entry in entries where entry.info !== previous {
            // Consecutive entries of one model (the usual case) cost no lookup.
            previous = entry.info
            if tables[entry.table.name] == nil { tables[entry.table.name] = entry.table }
        }
        for table in tables.values where table.primaryKey.isEmpty {
            throw SQLError(.misuse, "the table \(table.name) has no primary key: a session cannot write its rows")
        }
        if tables.count <= 1 { return Array(tables.keys) }
        return try Metadata(tables: tables.keys.sorted().compactMap { tables[$0] }).sortedTables().map(\.name)
    }

    /// The columns of `table` that reference its own table (`parent_id` of a tree), with the column each
    /// references.
    private static func selfReferences(_ table: Table) -> [(column: String, references: String)] {
        table.columns.compactMap { column in
            guard let target = column.reference, target.table == table.name else { return nil }
            return (column.name, target.column)
        }
    }

    /// New rows of one table in insert order: all of them at once, or — when the table references itself —
    /// in levels, each row after the rows its foreign key points to (through a relationship the session
    /// follows, or a key already set).
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the rows reference each other in a cycle.
    static func insertLevels(_ entries: [Tracked]) throws(SQLError) -> [[Tracked]] {
        guard let table = entries.first?.table, entries.count > 1 else { return [entries] }
        let references = selfReferences(table)
        guard !references.isEmpty else { return [entries] }
        var index: [ObjectIdentifier: Int] = [:]
        for (position, entry) in entries.enumerated() { index[ObjectIdentifier(entry.object)] = position }
        var edges: [(Int, Int)] = []
        let values = entries.map { $0.encode() }
        for (position, entry) in entries.enumerated() where entry.info.hasRelationships {
            let (before, after) = entry.operations.insertNeighbours(entry.object)
            for parent in before { if let other = index[ObjectIdentifier(parent)] { edges.append((other, position)) } }
            for child in after { if let other = index[ObjectIdentifier(child)] { edges.append((position, other)) } }
        }
        edges += keyEdges(values, references)
        guard let levels = levels(count: entries.count, edges: edges) else {
            throw SQLError(.misuse, "the new \(table.name) rows reference each other in a cycle: insert one first, then link it")
        }
        return levels.map { $0.map { entries[$0] } }
    }

    /// Rows of one table to delete: all at once, or — when the table references itself — children before
    /// their parents (by the foreign keys as last read or written).
    static func deleteLevels(_ entries: [Tracked]) throws(SQLError) -> [[Tracked]] {
        guard let table = entries.first?.table, entries.count > 1 else { return [entries] }
        let references = selfReferences(table)
        guard !references.isEmpty else { return [entries] }
        let values = entries.map { $0.snapshot ?? ColumnValues() }
        guard let levels = levels(count: entries.count, edges: keyEdges(values, references)) else {
            throw SQLError(.misuse, "the \(table.name) rows to delete reference each other in a cycle: unlink one first")
        }
        return levels.reversed().map { $0.map { entries[$0] } }
    }

    /// (parent, child) for each row whose self-referencing column holds another row's key.
    private static func keyEdges(_ values: [ColumnValues], _ references: [(column: String, references: String)]) -> [(Int, Int)] {
        var edges: [(Int, Int)] = []
        for reference in references {
            var rowsByKey: [SQLValue: Int] = [:]
            for (position, row) in values.enumerated() {
                if let key = row[reference.references], key != .null { rowsByKey[key] = position }
            }
            for (position, row) in values.enumerated() {
                if let key = row[reference.column], key != .null, let parent = rowsByKey[key], parent != position {
                    edges.append((parent, position))
                }
            }
        }
        return edges
    }

    /// The nodes `0..<count` in levels such that every edge (a, b) has a in an earlier level than b; nil when
    /// the edges make a cycle.
    static func levels(count: Int, edges: [(Int, Int)]) -> [[Int]]? {
        var successors = Array(repeating: [Int](), count: count)
        var pending = Array(repeating: 0, count: count)
        for (from, to) in edges where from != to {
            successors[from].append(to)
            pending[to] += 1
        }
        var level = (0..<count).filter { pending[$0] == 0 }
        var levels: [[Int]] = []
        var placed = 0
        while !level.isEmpty {
            levels.append(level)
            placed += level.count
            var next: [Int] = []
            for node in level {
                for successor in successors[node] {
                    pending[successor] -= 1
                    if pending[successor] == 0 { next.append(successor) }
                }
            }
            level = next
        }
        return placed == count ? levels : nil
    }

    /// The persistent objects whose encoded values differ from their snapshot, with the changed columns.
    private func dirtyEntries() -> [(Tracked, ColumnValues, [String])] {
        var dirty: [(Tracked, ColumnValues, [String])] = []
        // One buffer for every object's values: an unchanged object (the usual case) costs no allocation.
        var buffer = ColumnValues(capacity: 8)
        for entry in tracked where entry.snapshot != nil && !entry.deleted && !entry.detached {
            let changed = entry.changes(into: &buffer)
            if !changed.isEmpty { dirty.append((entry, buffer, changed)) }
        }
        return dirty
    }

    /// Inserts new objects of one table: objects that set the same columns go in one batch (`executeMany`:
    /// PostgreSQL pipeline mode, one round trip), each returning its row — generated keys and defaults — in
    /// order.
    private func insert(_ entries: [Tracked], isolation: isolated (any Actor)? = #isolation) async throws {
        guard let table = entries.first?.table else { return }
        // A NULL in an auto-incremented column lets the database generate it.
        let generated = Set(table.columns.filter(\.isAutoIncrement).map(\.name))
        // Batches in order of first appearance; consecutive objects setting the same columns (the usual case)
        // find their batch without hashing.
        var batches: [(names: [String], rows: [(Tracked, [SQLValue])])] = []
        var batchIndex: [[String]: Int] = [:]
        var buffer = ColumnValues(capacity: table.columns.count)
        var names: [String] = []
        for entry in entries {
            buffer.removeAll()
            entry.operations.encode(entry.object, into: &buffer)
            names.removeAll(keepingCapacity: true)
            var row: [SQLValue] = []
            row.reserveCapacity(buffer.names.count)
            for (name, value) in zip(buffer.names, buffer.values) where !(value == .null && generated.contains(name)) {
                names.append(name)
                row.append(value)
            }
            if let last = batches.indices.last, batches[last].names == names {
                batches[last].rows.append((entry, row))
            } else if let index = batchIndex[names] {
                batches[index].rows.append((entry, row))
            } else {
                batchIndex[names] = batches.count
                batches.append((names, [(entry, row)]))
            }
        }
        let returning = table.columns.map { SelectItem(node: SQLNode(.column(qualifier: nil, name: $0.name)), label: nil) }
        let keyNames = table.primaryKey
        for (names, batch) in batches {
            var statement = SQLAsync.insert(into: table)
                .values(names.map { Assignment(column: $0, node: SQLNode(.parameter($0))) })
            statement.returningItems = returning
            // Each column is one placeholder, in the order of `names`: the values go in as they are, positionally.
            let result = try await run(statement, batch.map(\.1))
            guard result.count == batch.count else {
                throw SQLError(.database, "inserting \(batch.count) \(table.name) rows returned \(result.count)")
            }
            let keyIndexes = keyNames.map { result.columns.firstIndex(of: $0) }
            byKey.reserveCapacity(byKey.count + batch.count)
            for ((entry, _), row) in zip(batch, result) {
                try entry.operations.update(entry.object, row)
                // The returned row is the snapshot (compared in the model's encoding if ever needed).
                entry.snapshot = ColumnValues(row)
                entry.canonical = false
                let key = IdentityKey(entry.type, row: row, keyIndexes)
                entry.key = key
                byKey[key] = entry
            }
        }
    }

    /// Updates the changed columns of persistent objects: objects of one table changing the same columns go
    /// in one batch; a versioned object's update applies only to the version it read.
    private func update(_ dirty: [(Tracked, ColumnValues, [String])], isolation: isolated (any Actor)? = #isolation) async throws {
        struct BatchKey: Hashable {
            let table: String
            let changed: [String]
        }
        var batches: [BatchKey: [(Tracked, ColumnValues)]] = [:]
        var order: [BatchKey] = []
        for (entry, values, changed) in dirty {
            let key = BatchKey(table: entry.table.name, changed: changed.filter { $0 != entry.versionColumn })
            if batches[key] == nil { order.append(key) }
            batches[key, default: []].append((entry, values))
        }
        for key in order {
            guard let batch = batches[key], let first = batch.first?.0 else { continue }
            let table = first.table
            let version = first.versionColumn
            let keyNames = table.primaryKey
            var statement = SQLAsync.update(table)
            statement.assignments = key.changed.map { Assignment(column: $0, node: SQLNode(.parameter($0))) }
            statement.conditions.append(Self.keyCondition(table, keyNames, keyNames.map { SQLNode(.parameter("key." + $0)) }))
            if let version {
                // Optimistic concurrency: only the version this object read, and the next one written.
                let column = SQLNode(.column(qualifier: table.reference, name: version))
                statement.assignments.append(Assignment(column: version, node: SQLNode(.binary(column, "+", SQLNode(.value(.integer(1)))))))
                statement.conditions.append(SQLNode(.binary(column, "=", SQLNode(.parameter("version")))))
                statement.returningItems = table.columns.map { SelectItem(node: SQLNode(.column(qualifier: nil, name: $0.name)), label: nil) }
            }
            let sets = batch.map { entry, values -> [SQLValue] in
                let snapshot = entry.snapshot ?? ColumnValues()
                var set = key.changed.map { values[$0] ?? .null }
                if version != nil { set.append(.integer(1)) }  // the version's increment
                set += keyNames.map { snapshot[$0] ?? .null }
                if let version { set.append(snapshot[version] ?? .null) }
                return set
            }
            let result = try await run(statement, sets)
            let written = version == nil ? result.rowsAffected : result.count
            guard written == batch.count else {
                throw SQLError(
                    .staleData,
                    version == nil
                        ? "\(batch.count - written) of the \(batch.count) \(table.name) rows being updated are gone"
                        : "\(batch.count - written) of the \(batch.count) \(table.name) rows being updated were changed or deleted since they were read (their version moved on)")
            }
            if version != nil {
                for ((entry, _), row) in zip(batch, result) { try entry.operations.update(entry.object, row) }
            }
            let keyChanged = key.changed.contains(where: keyNames.contains)
            for (entry, values) in batch {
                entry.snapshot = version == nil ? values : entry.encode()
                entry.canonical = true
                if keyChanged {
                    // A new primary key: the identity map follows it.
                    if let old = entry.key, byKey[old] === entry { byKey[old] = nil }
                    let new = IdentityKey(entry.type, keyNames.map { values[$0] ?? .null })
                    entry.key = new
                    byKey[new] = entry
                }
            }
        }
    }

    /// Deletes persistent objects of one table in one batch (a versioned object only at the version it read).
    private func delete(_ entries: [Tracked], isolation: isolated (any Actor)? = #isolation) async throws {
        guard let first = entries.first else { return }
        let table = first.table
        let keyNames = table.primaryKey
        let version = first.versionColumn
        var statement = SQLAsync.delete(from: table)
        statement.conditions.append(Self.keyCondition(table, keyNames, keyNames.map { SQLNode(.parameter("key." + $0)) }))
        if let version {
            statement.conditions.append(
                SQLNode(.binary(SQLNode(.column(qualifier: table.reference, name: version)), "=", SQLNode(.parameter("version")))))
        }
        let sets = entries.map { entry -> [SQLValue] in
            let snapshot = entry.snapshot ?? ColumnValues()
            var set = keyNames.map { snapshot[$0] ?? .null }
            if let version { set.append(snapshot[version] ?? .null) }
            return set
        }
        let result = try await run(statement, sets)
        guard result.rowsAffected == entries.count else {
            throw SQLError(
                .staleData,
                "\(entries.count - result.rowsAffected) of the \(entries.count) \(table.name) rows being deleted were already gone"
                    + (version == nil ? "" : " or changed since they were read"))
        }
        for entry in entries {
            forget(entry)
            deletedObjects[ObjectIdentifier(entry.object)] = entry.object
        }
    }

    /// Runs a statement whose parameters are positional, once per set (one set: a plain execute).
    func run(_ statement: some SQLStatement, _ sets: [[SQLValue]], isolation: isolated (any Actor)? = #isolation) async throws -> QueryResult {
        let text = try statement.sql(for: connection.dialect).text(placeholders: connection.dialect.placeholderStyle)
        if sets.count == 1 { return try await connection.execute(text: text, binds: sets[0]) }
        return try await connection.executeMany(text: text, sets: sets)
    }

    /// `k1 = v1 AND k2 = v2…`, every value bound.
    static func keyCondition(_ table: Table, _ names: [String], _ key: [SQLValue]) -> SQLNode {
        keyCondition(table, names, key.map { SQLNode(.value($0)) })
    }

    static func keyCondition(_ table: Table, _ names: [String], _ key: [SQLNode]) -> SQLNode {
        let parts = zip(names, key).map { name, value in
            SQLNode(.binary(SQLNode(.column(qualifier: table.reference, name: name)), "=", value))
        }
        return parts.count == 1 ? parts[0] : logical("AND", parts)
    }

    /// Objects are told apart by their primary key: a query must select it.
    static func checkKeyColumns<M: Model>(_ type: M.Type, _ info: ModelInfo, _ keyIndexes: [Int?]) throws(SQLError) {
        if keyIndexes.isEmpty {
            throw SQLError(.misuse, "\(M.self)'s table \(info.table.name) has no primary key: a session cannot tell its rows apart")
        }
        if keyIndexes.contains(where: { $0 == nil }) {
            throw SQLError(.misuse, "a query for \(M.self) objects must select its primary key (\(info.table.primaryKey.joined(separator: ", "))): use select(\(M.self).self) or select(all:)")
        }
    }

    /// The primary key's column names, when `key` has one value for each.
    static func checkKey<M: Model>(_ type: M.Type, _ table: Table, _ key: [SQLValue]) throws(SQLError) -> [String] {
        let names = table.primaryKey
        guard names.count == key.count, !names.isEmpty else {
            throw SQLError(.misuse, "\(M.self) has a primary key of \(names.count) columns; \(key.count) values were given")
        }
        return names
    }

    // MARK: Relationships at flush

    /// The save-update cascade (to a fixed point: objects added bring theirs), then removed members: orphans
    /// deleted or their foreign key cleared.
    private func prepareRelationships() throws {
        var index = 0
        while index < tracked.count {
            let entry = tracked[index]
            index += 1
            if !entry.deleted && !entry.detached && entry.info.hasRelationships {
                entry.operations.cascadeSave(entry.object, self)
            }
        }
        // Objects some live owner holds: taken out of one collection and put in another, a child is moved,
        // not orphaned.
        held.removeAll(keepingCapacity: true)
        for entry in tracked where !entry.deleted && !entry.detached && entry.info.hasRelationships {
            for object in entry.operations.heldObjects(entry.object) { held.insert(ObjectIdentifier(object)) }
        }
        for entry in tracked where !entry.detached && entry.relations != nil {
            try entry.operations.handleRemoved(entry.object, self)
        }
    }

    /// The delete cascade: children of deleted objects, loaded when they are not (one query per relationship
    /// and type), deleted too — to a fixed point.
    private func cascadeDeletes(isolation: isolated (any Actor)? = #isolation) async throws {
        var done = Set<ObjectIdentifier>()
        while true {
            var groups: [ObjectIdentifier: [Tracked]] = [:]
            for entry in tracked where entry.deleted && !entry.detached && entry.info.cascadesDeletes
                && done.insert(ObjectIdentifier(entry)).inserted {
                groups[ObjectIdentifier(entry.type), default: []].append(entry)
            }
            if groups.isEmpty { return }
            for entries in groups.values {
                guard let operations = entries.first?.operations else { continue }
                try await operations.cascadeDelete(entries.map(\.object), self, isolation: isolation)
            }
        }
    }

    /// Sets foreign keys from the loaded relationships (a child's key from its parent's, which an insert may
    /// just have generated).
    /// Sets foreign keys from relationships. Relationships changed since their load go last, so that where a
    /// child's parent (many-to-one) and a parent's collection (one-to-many) disagree about the same foreign
    /// key, the side that was changed wins: a child moved to another collection is moved even though its own
    /// `parent` still holds the old one, and the reverse.
    private func synchronizeKeys() throws {
        for changed in [false, true] {
            for entry in tracked where !entry.deleted && !entry.detached && entry.info.hasRelationships {
                try entry.operations.synchronize(entry.object, self, changed: changed)
            }
        }
    }

    /// The many-to-many association rows to insert and delete.
    private func linkChanges() throws -> [LinkChange] {
        var changes: [LinkChange] = []
        for entry in tracked where !entry.detached && entry.info.hasRelationships {
            changes += try entry.operations.linkChanges(entry.object, deleted: entry.deleted, persistent: entry.snapshot != nil, self)
        }
        return changes
    }

    /// Remembers what every loaded relationship holds, for the next flush to compare with.
    private func recordRelationships() {
        for entry in tracked where !entry.deleted && !entry.detached && entry.info.hasRelationships {
            entry.operations.record(entry.object, self)
        }
    }

    /// Records what a relationship of a tracked owner holds now (after a load or a flush).
    func record(_ owner: AnyObject, _ property: AnyKeyPath, _ related: [AnyObject]) {
        guard let entry = entry(for: owner) else { return }
        if entry.relations == nil { entry.relations = [:] }
        entry.relations?[property] = related
    }

    /// What a relationship of a tracked owner held at its load or the last flush (nil: never loaded through
    /// the session).
    func recorded(_ owner: AnyObject, _ property: AnyKeyPath) -> [AnyObject]? {
        entry(for: owner)?.relations?[property]
    }

    /// Sets a column of a tracked or new object (a foreign key): through its encoding and
    /// ``Model/update(from:)``; nothing when it already holds the value.
    func set<M: Model>(_ name: String, of object: M, to value: SQLValue) throws {
        var values = object.encoded()
        guard values[name] != value else { return }
        values[name] = value
        try object.update(from: values.row)
    }

    // MARK: Transaction

    func beginIfNeeded(isolation: isolated (any Actor)? = #isolation) async throws {
        if transaction == nil { transaction = try await connection.begin() }
    }

    /// Runs `body` in a savepoint of the session's transaction: when it throws, the database is rolled back
    /// to the savepoint and the objects written or loaded since are no longer known, so the session detaches
    /// them — all of them: it is cleared, like after ``rollback(isolation:)``, but the transaction goes on.
    /// Pending changes are flushed first.
    public func withSavepoint<T>(isolation: isolated (any Actor)? = #isolation, _ body: (Session) async throws -> T) async throws -> T {
        try await flush()
        try await beginIfNeeded()
        savepointDepth += 1
        defer { savepointDepth -= 1 }
        do {
            return try await connection.withTransaction { _ in
                let result = try await body(self)
                try await flush()
                return result
            }
        } catch {
            detachAll()
            throw error
        }
    }

    /// Flushes, then commits the session's transaction.
    public func commit(isolation: isolated (any Actor)? = #isolation) async throws {
        try await flush()
        guard let transaction else { return }
        self.transaction = nil
        do {
            try await transaction.commit()
        } catch {
            // Rolled back: what the objects say of the database is no longer true.
            detachAll()
            throw error
        }
    }

    /// Rolls the session's transaction back and detaches every object (their state in the database is no
    /// longer known). Shielded from cancellation.
    public func rollback(isolation: isolated (any Actor)? = #isolation) async {
        if let transaction {
            self.transaction = nil
            try? await transaction.rollback()
        }
        detachAll()
    }

    private func detachAll() {
        for entry in tracked { entry.detached = true }
        tracked.removeAll()
        byKey.removeAll()
        byObject.removeAll()
        indexedCount = 0
        detachedCount = 0
        deletedObjects.removeAll()
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

        var hasNull: Bool {
            switch key {
            case .one(let value): value == .null
            case .many(let values): values.contains(.null)
            }
        }

        /// The key in a row, at `indexes` (a missing column is NULL); no array for a one-column key.
        init(_ type: Any.Type, row: Row, _ indexes: [Int?]) {
            self.type = ObjectIdentifier(type)
            if indexes.count == 1 {
                key = .one(indexes[0].flatMap { row[$0] } ?? .null)
            } else {
                key = .many(indexes.map { $0.flatMap { row[$0] } ?? .null })
            }
        }
    }

    /// One tracked object, with its model's operations.
    final class Tracked {
        let object: AnyObject
        let info: ModelInfo
        var type: Any.Type { info.type }
        var table: Table { info.table }
        var operations: any ModelOperations { info.operations }
        var versionColumn: String? { info.versionColumn }
        /// The values last read or written; nil for an object still to insert.
        var snapshot: ColumnValues?
        /// Whether the snapshot is in the model's own encoding (else it is the row as the database returned
        /// it, which may encode a value differently: an integer for a `Bool` in SQLite, say).
        var canonical = true
        var key: IdentityKey?
        var deleted = false
        /// No longer tracked (forgotten, deleted and flushed, or rolled back).
        var detached = false
        /// What each loaded relationship held at its load or the last flush.
        var relations: [AnyKeyPath: [AnyObject]]?

        init(_ object: AnyObject, _ info: ModelInfo, snapshot: ColumnValues?) {
            self.object = object
            self.info = info
            self.snapshot = snapshot
        }

        func encode() -> ColumnValues { operations.encode(object) }

        /// The columns whose current values (encoded into `values`) differ from the snapshot.
        func changes(into values: inout ColumnValues) -> [String] {
            values.removeAll()
            operations.encode(object, into: &values)
            guard let snapshot else { return values.names }
            if values.equalsInOrder(snapshot) { return [] }
            var changed = values.changedNames(since: snapshot)
            if !changed.isEmpty && !canonical, let recoded = operations.recode(snapshot) {
                // Compare in the model's own encoding: decoded from the row and encoded again, once.
                self.snapshot = recoded
                canonical = true
                changed = values.changedNames(since: recoded)
            }
            return changed
        }
    }
}

/// What a session knows of a model type, made once per type and shared by its tracked objects.
final class ModelInfo {
    let type: Any.Type
    /// `M.Schema.table` (building it per object would cost more than the rest of the bookkeeping).
    let table: Table
    let operations: any ModelOperations
    let versionColumn: String?
    let hasRelationships: Bool
    let cascadesDeletes: Bool

    init<M: Model>(_ type: M.Type) {
        self.type = M.self
        table = M.Schema.table
        let operations = Operations<M>()
        self.operations = operations
        versionColumn = M.versionColumn?.name
        hasRelationships = operations.hasRelationships
        cascadesDeletes = operations.cascadesDeletes
    }
}

/// A model type's operations on a tracked object, without a closure (and its allocation) per object.
protocol ModelOperations {
    var versionColumn: String? { get }
    var hasRelationships: Bool { get }
    var cascadesDeletes: Bool { get }
    func encode(_ object: AnyObject) -> ColumnValues
    func encode(_ object: AnyObject, into values: inout ColumnValues)
    func update(_ object: AnyObject, _ row: Row) throws
    /// The snapshot in the model's own encoding: decoded into a new object and encoded again.
    func recode(_ snapshot: ColumnValues) -> ColumnValues?
    func cascadeSave(_ object: AnyObject, _ session: Session)
    func handleRemoved(_ object: AnyObject, _ session: Session) throws
    func cascadeDelete(_ objects: [AnyObject], _ session: Session, isolation: isolated (any Actor)?) async throws
    /// Sets foreign keys from the object's relationships: those that changed since their load or the last
    /// flush (`changed`), or the others.
    func synchronize(_ object: AnyObject, _ session: Session, changed: Bool) throws
    func linkChanges(_ object: AnyObject, deleted: Bool, persistent: Bool, _ session: Session) throws -> [LinkChange]
    func heldObjects(_ object: AnyObject) -> [AnyObject]
    func record(_ object: AnyObject, _ session: Session)
    /// The objects held through relationships whose rows go in before the object's (`before`: its parents)
    /// and after it (`after`: its children).
    func insertNeighbours(_ object: AnyObject) -> (before: [AnyObject], after: [AnyObject])
}

struct Operations<M: Model>: ModelOperations {
    var versionColumn: String? { M.versionColumn?.name }
    var hasRelationships: Bool { !M.relationships.isEmpty }
    var cascadesDeletes: Bool { relationships.contains { $0.cascade.contains(.delete) } }
    var relationships: [any RelationshipInternals<M>] { M.relationships.compactMap { $0 as? any RelationshipInternals<M> } }

    // `unsafeDowncast`: a Tracked entry is created only with an `M` and its `Operations<M>` together.
    func encode(_ object: AnyObject) -> ColumnValues { unsafeDowncast(object, to: M.self).encoded() }
    func encode(_ object: AnyObject, into values: inout ColumnValues) { unsafeDowncast(object, to: M.self).encode(to: &values) }
    func update(_ object: AnyObject, _ row: Row) throws { try unsafeDowncast(object, to: M.self).update(from: row) }
    func recode(_ snapshot: ColumnValues) -> ColumnValues? { (try? M(row: snapshot.row))?.encoded() }

    func cascadeSave(_ object: AnyObject, _ session: Session) {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships where relationship.cascade.contains(.saveUpdate) {
            relationship.cascadeSave(owner, in: session)
        }
    }

    func handleRemoved(_ object: AnyObject, _ session: Session) throws {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships { try relationship.handleRemoved(owner, in: session) }
    }

    func cascadeDelete(_ objects: [AnyObject], _ session: Session, isolation: isolated (any Actor)?) async throws {
        let owners = objects.map { unsafeDowncast($0, to: M.self) }
        for relationship in relationships where relationship.cascade.contains(.delete) {
            try await relationship.cascadeDelete(owners, in: session, isolation: isolation)
        }
    }

    func synchronize(_ object: AnyObject, _ session: Session, changed: Bool) throws {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships where relationship.hasChanged(owner, in: session) == changed {
            try relationship.synchronize(owner, in: session)
        }
    }

    func linkChanges(_ object: AnyObject, deleted: Bool, persistent: Bool, _ session: Session) throws -> [LinkChange] {
        let owner = unsafeDowncast(object, to: M.self)
        var changes: [LinkChange] = []
        for relationship in relationships {
            changes += try relationship.linkChanges(owner, deleted: deleted, persistent: persistent, in: session)
        }
        return changes
    }

    func heldObjects(_ object: AnyObject) -> [AnyObject] {
        let owner = unsafeDowncast(object, to: M.self)
        return relationships.flatMap { $0.loadedObjects(owner) ?? [] }
    }

    func insertNeighbours(_ object: AnyObject) -> (before: [AnyObject], after: [AnyObject]) {
        let owner = unsafeDowncast(object, to: M.self)
        var before: [AnyObject] = [], after: [AnyObject] = []
        for relationship in relationships {
            switch relationship.insertOrder {
            case .ownerFirst: after += relationship.loadedObjects(owner) ?? []
            case .relatedFirst: before += relationship.loadedObjects(owner) ?? []
            case .none: break
            }
        }
        return (before, after)
    }

    func record(_ object: AnyObject, _ session: Session) {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships {
            if let related = relationship.loadedObjects(owner) { session.record(owner, relationship.propertyKey, related) }
        }
    }
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
