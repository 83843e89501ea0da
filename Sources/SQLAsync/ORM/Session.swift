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
    /// Every tracked object, in the order it was tracked, stored inline (no allocation per object). A
    /// forgotten entry is flagged `detached` and stays until enough of them are dropped together
    /// (``compact()``): removing each at once would make forgetting n objects O(n²).
    private var entries: [Entry] = []
    private var detachedCount = 0
    /// The snapshots' storage: the results objects were loaded from (one for all of a result's entries, which
    /// keep their row's offset), and the rows of single entries (what an insert sent or read back, an update's
    /// values, a refresh's or a re-encoded row). `storeUsers` counts the entries using each: a store no entry
    /// uses any more is emptied at once (its result's memory goes), its slot dropped at the next compaction.
    private var stores: [Row] = []
    private var storeUsers: [Int] = []
    /// Changes whenever entry indices do (a compaction, a rollback): a flush that finds it changed after an
    /// `await` stops rather than use stale indices (another task used the session meanwhile).
    private var generation = 0
    /// Identity map: the entry of each primary key.
    private var byKey = IdentityMap()
    /// The keys of tracked objects whose key is not one integer (an entry holds an integer key itself).
    private var otherKeys: [ObjectIdentifier: IdentityKey] = [:]
    /// What each loaded relationship of a tracked object held at its load or the last flush.
    private var relations: [ObjectIdentifier: [AnyKeyPath: [AnyObject]]] = [:]
    /// The entries by object, for `entries[..<indexedCount]`: objects loaded by a query are indexed only when
    /// a lookup by object needs them (a read-only session never pays for it).
    private var byObject: [ObjectIdentifier: Int] = [:]
    private var indexedCount = 0
    /// Objects deleted by a flush of this session (held, so that their identifiers stay theirs).
    private var deletedObjects: [ObjectIdentifier: AnyObject] = [:]
    /// What the session knows of each model type it met.
    private var models: [ObjectIdentifier: ModelInfo] = [:]
    private var savepointDepth = 0
    /// During a flush: the objects live owners' loaded relationships hold.
    private(set) var held = Set<ObjectIdentifier>()

    /// Whether queries flush pending changes first (default: on). ``get(_:key:isolation:)`` never does.
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
        Self.reserve(&entries, adding: objects.count)
        byObject.reserveCapacity(byObject.count + objects.count)
        for object in objects {
            let id = ObjectIdentifier(object)
            // A deleted object is not brought back (as with `add`).
            if !deletedObjects.isEmpty, deletedObjects[id] != nil { continue }
            // One hash and probe for a new object (the usual case), as in `materialize`.
            if let index = byObject.updateValue(entries.count, forKey: id) {
                byObject[id] = index
            } else {
                entries.append(Entry(object, info))
            }
        }
        indexedCount = entries.count
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
        guard indexedCount < entries.count else { return }
        byObject.reserveCapacity(entries.count)
        for index in indexedCount..<entries.count where !entries[index].detached {
            byObject[ObjectIdentifier(entries[index].object)] = index
        }
        indexedCount = entries.count
    }

    /// The index of a tracked object's entry.
    private func index(of object: AnyObject) -> Int? {
        indexAll()
        return byObject[ObjectIdentifier(object)]
    }

    /// Drops forgotten entries once they are at least half of them (loops skip them until then), keeping the
    /// indexed ones a prefix; the maps follow the entries' new places.
    private func compact() {
        guard detachedCount > 0, detachedCount * 2 >= entries.count else { return }
        var kept: [Entry] = []
        kept.reserveCapacity(entries.count - min(detachedCount, entries.count))
        var indexed = 0
        for index in entries.indices where !entries[index].detached {
            if index < indexedCount { indexed += 1 }
            kept.append(entries[index])
        }
        entries = kept
        indexedCount = indexed
        detachedCount = 0
        generation += 1
        // Only the stores the remaining entries use (a result's store stays while one of its entries does).
        var keptStores: [Row] = []
        var keptUsers: [Int] = []
        var storeIndex: [Int: Int] = [:]
        for index in entries.indices where entries[index].store >= 0 {
            let old = entries[index].store
            if let new = storeIndex[old] {
                entries[index].store = new
                keptUsers[new] += 1
            } else {
                storeIndex[old] = keptStores.count
                entries[index].store = keptStores.count
                keptStores.append(stores[old])
                keptUsers.append(1)
            }
        }
        stores = keptStores
        storeUsers = keptUsers
        byKey.removeAll()
        byObject.removeAll(keepingCapacity: true)
        for index in entries.indices {
            if let key = key(of: index) { byKey[key] = index }
            if index < indexedCount { byObject[ObjectIdentifier(entries[index].object)] = index }
        }
    }

    /// The entries the session holds, forgotten ones not dropped yet included (for tests).
    var trackedCount: Int { entries.count }

    /// The snapshot stores holding rows (for tests).
    var liveStoreCount: Int { stores.filter { !$0.columns.isEmpty }.count }

    /// Tracks a new object; returns whether it was new to the session.
    @discardableResult
    func track<M: Model>(_ object: M) -> Bool {
        // A deleted object still held by a relationship is not brought back by the save-update cascade.
        guard index(of: object) == nil, deletedObjects[ObjectIdentifier(object)] == nil else { return false }
        byObject[ObjectIdentifier(object)] = entries.count
        entries.append(Entry(object, info(M.self)))
        indexedCount = entries.count
        return true
    }

    /// Marks a tracked object for deletion at the next flush (a new one is simply forgotten), with the
    /// objects its relationships cascade deletes to.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the session does not track the object.
    public func delete<M: Model>(_ object: M) throws(SQLError) {
        guard let index = index(of: object) else {
            throw SQLError(.misuse, "delete: the session does not track this \(M.self)")
        }
        markDeleted(index)
    }

    /// Marks a tracked object for deletion (for the relationships' cascades); nothing for an untracked one.
    func markDeleted(_ object: AnyObject) {
        if let index = index(of: object), !entries[index].deleted { markDeleted(index) }
    }

    private func markDeleted(_ index: Int) {
        if entries[index].store < 0 { forget(index) } else { entries[index].deleted = true }
    }

    /// Whether the session tracks `object` (and it is not deleted).
    public func contains<M: Model>(_ object: M) -> Bool {
        isLive(object)
    }

    /// Whether the session tracks `object` (of any model) and it is not deleted.
    func isLive(_ object: AnyObject) -> Bool {
        index(of: object).map { !entries[$0].deleted } ?? false
    }

    /// Stops tracking an object: later changes to it are not written.
    public func expunge<M: Model>(_ object: M) {
        if let index = index(of: object) { forget(index) }
    }

    private func forget(_ index: Int) {
        guard !entries[index].detached else { return }
        entries[index].detached = true
        detachedCount += 1
        let id = ObjectIdentifier(entries[index].object)
        if index < indexedCount { byObject[id] = nil }
        if let key = key(of: index), byKey[key] == index { byKey[key] = nil }
        otherKeys[id] = nil
        relations[id] = nil
        // Its snapshot is not needed any more.
        if entries[index].store >= 0 {
            releaseStore(entries[index].store)
            entries[index].store = -1
            entries[index].ownsStore = false
        }
    }

    // MARK: Loading

    /// The object with primary key `key` (one column), from the identity map when loaded, else from the
    /// database; `nil` when there is none. See ``get(_:key:isolation:)``.
    public func get<M: Model>(_ type: M.Type, _ key: some SQLBindable, isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        try await get(type, key: [key.sqlValue])
    }

    /// The object with the composite primary key `key` (values in the order of the key's columns).
    ///
    /// Without a query when the session has it: loaded (`nil` when it is deleted in the session), or added
    /// and not inserted yet. Otherwise one query by primary key, without flushing first (a loop of `get`s in
    /// a session holding many objects would otherwise check them all each time): only those objects could
    /// change its answer, and they are looked at first. (A primary key changed on a loaded object and not
    /// flushed yet is not seen by `get` under its new value.)
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when `key` has not as many values as the primary key has columns.
    public func get<M: Model>(_ type: M.Type, key: [SQLValue], isolation: isolated (any Actor)? = #isolation) async throws -> M? {
        let table = M.Schema.table
        let names = try Self.checkKey(M.self, table, key)
        let known = byKey[IdentityKey(M.self, key)]
        if let index = known, !entries[index].deleted, let object = entries[index].object as? M { return object }
        if let added = added(M.self, names, key) { return added }
        // Deleted in the session (and not replaced by an added object).
        if known != nil { return nil }
        var query = select(all: M.Schema.self)
        query.conditions.append(Self.keyCondition(table, names, key))
        return try await fetch(query, as: M.self).first
    }

    /// The object of type `M` added to the session, its insert pending, whose key columns `names` hold `key`.
    private func added<M: Model>(_ type: M.Type, _ names: [String], _ key: [SQLValue]) -> M? {
        var values = ColumnValues(capacity: names.count)
        for index in entries.indices where entries[index].store < 0 && !entries[index].detached {
            guard let object = entries[index].object as? M else { continue }
            values.removeAll()
            object.encode(to: &values)
            if zip(names, key).allSatisfy({ values[$0] == $1 }) { return object }
        }
        return nil
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
        Self.reserve(&entries, adding: result.count)
        byKey.reserveCapacity(adding: result.count, of: M.self)
        guard let first = result.first else { return [] }
        // The result's storage is the snapshot store of the entries it makes.
        let store = addStore(Row(columns: first.columns, storage: first.storage, offset: 0), users: 0)
        let tracked = entries.count
        // The entries and the identity map are held by the loop (no exclusivity check per row), then put back.
        var entries = self.entries, byKey = self.byKey
        self.entries = []
        self.byKey = IdentityMap()
        defer {
            self.entries = entries
            self.byKey = byKey
            // The new entries use the store; when there are none (every object was tracked already, or the
            // first row failed to decode), the session keeps no reference to the result.
            if entries.count == tracked {
                stores.removeLast()
                storeUsers.removeLast()
            } else {
                storeUsers[store] = entries.count - tracked
            }
        }
        for row in result {
            let (object, _) = try Self.materialize(
                M.self, row, info: info, keyIndexes: keyIndexes, store: store, offset: row.offset, ownsStore: false,
                entries: &entries, byKey: &byKey, otherKeys: &otherKeys)
            if let object { objects.append(object) }
        }
        return objects
    }

    /// The tracked object for a row (the one already in the identity map, or a new one, whose snapshot is the
    /// row, stored as its own); nil when the object was deleted in this session.
    func materialize<M: Model>(_ type: M.Type, _ row: Row, info: ModelInfo, keyIndexes: [Int?]) throws -> M? {
        let (object, created) = try Self.materialize(
            M.self, row, info: info, keyIndexes: keyIndexes, store: stores.count, offset: 0, ownsStore: true, entries: &entries,
            byKey: &byKey, otherKeys: &otherKeys)
        if created { _ = addStore(row, users: 1) }
        return object
    }

    /// The tracked object for a row, and whether it is new: a new entry's snapshot is row `offset` of
    /// `stores[store]` (a store of its own when `ownsStore`, else a result's, shared).
    private static func materialize<M: Model>(
        _ type: M.Type, _ row: consuming Row, info: ModelInfo, keyIndexes: [Int?], store: Int, offset: Int, ownsStore: Bool,
        entries: inout [Entry], byKey: inout IdentityMap, otherKeys: inout [ObjectIdentifier: IdentityKey]
    ) throws -> (M?, created: Bool) {
        // A one-integer key (the usual case) is read and claimed as a plain integer; any other through an
        // IdentityKey. One hash and probe for a new key: the slot is claimed for a new entry at the end, and
        // given back to a key the map had.
        let count = entries.count
        let type = ObjectIdentifier(M.self)
        var key: IdentityKey?
        let integer: Int64
        let existing: Int?
        if keyIndexes.count == 1, let position = keyIndexes[0], position >= 0, position < row.columns.count,
            case .integer(let value) = row.storage[row.offset + position] {
            integer = value
            existing = byKey.claim(type, integer, for: count)
        } else {
            let other = IdentityKey(M.self, row: row, keyIndexes)
            if other.hasNull { throw SQLError(.misuse, "a \(M.self) row has a NULL primary key") }
            key = other
            integer = other.integer
            existing = byKey.claim(other, for: count)
        }
        if let index = existing {
            return (entries[index].deleted ? nil : entries[index].object as? M, false)
        }
        do {
            let object = try M(row: row)
            // The row is the snapshot as it is (it shares the result's storage: no copy per object); it is
            // compared in the model's own encoding only if the object's values ever differ from it.
            if let key, key.values != nil { otherKeys[ObjectIdentifier(object)] = key }
            entries.append(Entry(
                object, info, keyKind: key?.values == nil ? .integer : .other, keyInteger: integer, store: store,
                offset: offset, ownsStore: ownsStore, canonical: false))
            return (object, true)
        } catch {
            byKey[key ?? IdentityKey(M.self, integer: integer)] = nil
            throw error
        }
    }

    /// The tracked object of type `M` with primary key `key`, if any (no query).
    func tracked<M: Model>(_ type: M.Type, key: [SQLValue]) -> M? {
        guard let index = byKey[IdentityKey(M.self, key)], !entries[index].deleted else { return nil }
        return entries[index].object as? M
    }

    /// Reloads every column of a tracked object from the database, discarding its unsaved changes (its
    /// relationships stay as they are).
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for an object the session does not track or has not inserted yet;
    ///   ``SQLError/Kind/staleData`` when its row is gone.
    public func refresh<M: Model>(_ object: M, isolation: isolated (any Actor)? = #isolation) async throws {
        guard let index = index(of: object), !entries[index].deleted else {
            throw SQLError(.misuse, "refresh: the session does not track this \(M.self)")
        }
        guard let snapshot = snapshot(index) else {
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
        // Looked up again: the await may have let the session change (a flush compacts the entries).
        if let index = self.index(of: object) {
            setSnapshot(index, object.encoded().row, canonical: true)
        }
    }

    /// The session's object for `object`'s primary key, with `object`'s column values copied onto it: the
    /// tracked one, or the one in the database (loaded), or — when there is none — `object` itself, added
    /// as new. `object` is not tracked by the merge (unless it is the one added).
    ///
    /// Use it for an object built or decoded outside the session (a request body, another session's object).
    public func merge<M: Model>(_ object: M, isolation: isolated (any Actor)? = #isolation) async throws -> M {
        if isLive(object) { return object }
        let values = object.encoded()
        let table = M.Schema.table
        let key = table.primaryKey.map { values[$0] ?? .null }
        guard !key.isEmpty, !key.contains(.null) else {
            add(object)
            return object
        }
        // Pending changes first (as a query would): a deletion of the same key, say, is written before the
        // object that replaces it is added.
        if autoflush { try await flush() }
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
        let generation = self.generation
        let withRelationships = models.values.contains { $0.hasRelationships }
        do {
            if withRelationships {
                try prepareRelationships()
                try await cascadeDeletes()
                try checkUnchanged(generation)
            }
            // Indices stay valid to the end of the flush: entries are only appended until the next compaction.
            let inserts = entries.indices.filter { entries[$0].store < 0 && !entries[$0].detached }
            // Without inserts no key changes, so what changed is known now (foreign keys set first).
            if inserts.isEmpty && withRelationships { try synchronizeKeys() }
            var updates = inserts.isEmpty ? dirtyEntries() : nil
            let deletes = entries.indices.filter { entries[$0].deleted && !entries[$0].detached }
            let links = withRelationships ? try linkChanges() : []
            if inserts.isEmpty && deletes.isEmpty && updates?.isEmpty == true && links.isEmpty { return }
            try await beginIfNeeded()
            try checkUnchanged(generation)
            let order = try tableOrder(inserts + deletes)
            for name in order {
                let batch = order.count == 1 ? inserts : inserts.filter { entries[$0].info.table.name == name }
                guard !batch.isEmpty else { continue }
                // Rows of a table that references itself (a tree) go in parents first, a level at a time.
                for level in try insertLevels(batch) {
                    if withRelationships { try synchronizeKeys() }
                    // Models sharing a table are written apart (each with its own encoding).
                    for group in byModel(level) { try await insert(group, generation: generation) }
                }
            }
            if updates == nil {
                if withRelationships { try synchronizeKeys() }
                updates = dirtyEntries()
            }
            try await update(updates ?? [], generation: generation)
            for change in links {
                try await change.write(self)
                try checkUnchanged(generation)
            }
            for name in order.reversed() {
                let batch = order.count == 1 ? deletes : deletes.filter { entries[$0].info.table.name == name }
                for level in try deleteLevels(batch) {
                    for group in byModel(level) { try await delete(group, generation: generation) }
                }
            }
            if withRelationships { recordRelationships() }
        } catch {
            // Inside a savepoint, the savepoint is rolled back (by `withSavepoint`), not the transaction.
            if savepointDepth == 0 { await rollback() }
            throw error
        }
    }

    /// - Throws: ``SQLError/Kind/misuse`` when the session's entries moved since `generation` (another task
    ///   rolled it back or flushed it while this flush waited).
    private func checkUnchanged(_ generation: Int) throws(SQLError) {
        guard generation == self.generation else {
            throw SQLError(.misuse, "the session was rolled back or flushed by another task during this flush: use one session per task")
        }
    }

    /// Entry indices grouped by model, in order of first appearance (one group in the usual case).
    private func byModel(_ indices: [Int]) -> [[Int]] {
        guard let first = indices.first else { return [] }
        let info = entries[first].info
        if indices.allSatisfy({ entries[$0].info === info }) { return [indices] }
        var groups: [[Int]] = []
        var position: [ObjectIdentifier: Int] = [:]
        for index in indices {
            let model = ObjectIdentifier(entries[index].info)
            if let existing = position[model] {
                groups[existing].append(index)
            } else {
                position[model] = groups.count
                groups.append([index])
            }
        }
        return groups
    }

    /// The tables of the entries to insert or delete, parents before children.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for a table without a primary key (the session could not tell its
    ///   rows apart), or a cycle of foreign keys among them.
    private func tableOrder(_ indices: [Int]) throws(SQLError) -> [String] {
        var tables: [String: Table] = [:]
        var previous: ModelInfo?
        for index in indices where entries[index].info !== previous {
            // Consecutive entries of one model (the usual case) cost no lookup.
            let info = entries[index].info
            previous = info
            if tables[info.table.name] == nil { tables[info.table.name] = info.table }
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
    private func insertLevels(_ batch: [Int]) throws(SQLError) -> [[Int]] {
        guard let first = batch.first, batch.count > 1 else { return [batch] }
        let table = entries[first].info.table
        let references = Self.selfReferences(table)
        guard !references.isEmpty else { return [batch] }
        var position: [ObjectIdentifier: Int] = [:]
        for (place, index) in batch.enumerated() { position[ObjectIdentifier(entries[index].object)] = place }
        var edges: [(Int, Int)] = []
        let values = batch.map { entries[$0].info.operations.encode(entries[$0].object).row }
        for (place, index) in batch.enumerated() where entries[index].info.hasRelationships {
            let (before, after) = entries[index].info.operations.insertNeighbours(entries[index].object)
            for parent in before { if let other = position[ObjectIdentifier(parent)] { edges.append((other, place)) } }
            for child in after { if let other = position[ObjectIdentifier(child)] { edges.append((place, other)) } }
        }
        edges += Self.keyEdges(values, references)
        guard let levels = Self.levels(count: batch.count, edges: edges) else {
            throw SQLError(.misuse, "the new \(table.name) rows reference each other in a cycle: insert one first, then link it")
        }
        return levels.map { $0.map { batch[$0] } }
    }

    /// Rows of one table to delete: all at once, or — when the table references itself — children before
    /// their parents (by the foreign keys as last read or written).
    private func deleteLevels(_ batch: [Int]) throws(SQLError) -> [[Int]] {
        guard let first = batch.first, batch.count > 1 else { return [batch] }
        let table = entries[first].info.table
        let references = Self.selfReferences(table)
        guard !references.isEmpty else { return [batch] }
        let values = batch.map { snapshot($0) ?? Row(columns: [], values: []) }
        guard let levels = Self.levels(count: batch.count, edges: Self.keyEdges(values, references)) else {
            throw SQLError(.misuse, "the \(table.name) rows to delete reference each other in a cycle: unlink one first")
        }
        return levels.reversed().map { $0.map { batch[$0] } }
    }

    /// (parent, child) for each row whose self-referencing column holds another row's key.
    private static func keyEdges(_ values: [Row], _ references: [(column: String, references: String)]) -> [(Int, Int)] {
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

    /// The persistent entries whose objects' encoded values differ from their snapshot, with the values and
    /// the changed columns.
    private func dirtyEntries() -> [(index: Int, values: ColumnValues, changed: [String])] {
        var dirty: [(index: Int, values: ColumnValues, changed: [String])] = []
        // One buffer for every object's values: an unchanged object (the usual case) costs no allocation.
        var buffer = ColumnValues(capacity: 8)
        // The store the buffer checks against: set once for all the entries of one result.
        var reference = -1
        for index in entries.indices where entries[index].store >= 0 && !entries[index].deleted && !entries[index].detached {
            let store = entries[index].store
            if store != reference {
                buffer.setReference(stores[store])
                reference = store
            }
            let info = entries[index].info
            let object = entries[index].object
            // The usual case, an unchanged object: checked as it encodes itself, nothing stored.
            if buffer.matches(offset: entries[index].offset, encode: { info.operations.encode(object, into: &$0) }) { continue }
            let changed = changes(index, into: &buffer)
            reference = -1  // the entry's snapshot may have been replaced
            if !changed.isEmpty { dirty.append((index, buffer, changed)) }
        }
        return dirty
    }

    /// The columns of a persistent entry whose current values (encoded into `values`) differ from its
    /// snapshot; none for a new one.
    private func changes(_ index: Int, into values: inout ColumnValues) -> [String] {
        guard let snapshot = snapshot(index) else { return [] }
        let info = entries[index].info
        values.removeAll()
        info.operations.encode(entries[index].object, into: &values)
        var changed = values.changedNames(since: snapshot)
        if !changed.isEmpty && !entries[index].canonical, let recoded = info.operations.recode(snapshot) {
            // Compare in the model's own encoding: decoded from the row and encoded again, once.
            setSnapshot(index, recoded.row, canonical: true)
            changed = values.changedNames(since: recoded.row)
        }
        return changed
    }

    /// The snapshot of an entry (nil: still to insert).
    private func snapshot(_ index: Int) -> Row? {
        let store = entries[index].store
        guard store >= 0 else { return nil }
        let base = stores[store]
        return Row(columns: base.columns, storage: base.storage, offset: base.offset + entries[index].offset)
    }

    /// Replaces an entry's snapshot with a row of its own (in place when it already has its own store).
    private func setSnapshot(_ index: Int, _ row: Row, canonical: Bool) {
        if entries[index].ownsStore {
            stores[entries[index].store] = row
        } else {
            if entries[index].store >= 0 { releaseStore(entries[index].store) }
            entries[index].store = addStore(row, users: 1)
            entries[index].ownsStore = true
        }
        entries[index].offset = 0
        entries[index].canonical = canonical
    }

    /// A new snapshot store used by `users` entries; its index.
    private func addStore(_ row: Row, users: Int) -> Int {
        stores.append(row)
        storeUsers.append(users)
        return stores.count - 1
    }

    /// One entry less uses the store: with none left, its rows are let go at once.
    private func releaseStore(_ store: Int) {
        storeUsers[store] -= 1
        if storeUsers[store] == 0 { stores[store] = Self.noRow }
    }

    private static let noRow = Row(columns: [], values: [])

    /// Room for `count` more entries, growing geometrically (an exact reservation per load would copy the
    /// array at each of many small loads).
    private static func reserve(_ array: inout [Entry], adding count: Int) {
        let needed = array.count + count
        if needed > array.capacity { array.reserveCapacity(max(needed, array.capacity * 2)) }
    }

    /// Inserts new objects of one model: objects that set the same columns go in one batch (`executeMany`:
    /// PostgreSQL pipeline mode, one round trip). A batch that leaves a column to the database (a generated
    /// key, a default) or has keys the database may write differently (``keysRoundTrip(_:names:_:)``)
    /// returns its rows, which update the objects; a batch that sets every column, with integer or text keys,
    /// returns nothing, and what it sent is the snapshot.
    private func insert(_ batchIndices: [Int], generation: Int, isolation: isolated (any Actor)? = #isolation) async throws {
        guard let first = batchIndices.first else { return }
        let info = entries[first].info
        let table = info.table
        let operations = info.operations
        // A NULL in an auto-incremented column lets the database generate it.
        let generated = Set(table.columns.filter(\.isAutoIncrement).map(\.name))
        // Batches in order of first appearance; consecutive objects setting the same columns (the usual case)
        // find their batch without hashing.
        var batches: [(names: [String], rows: [(index: Int, values: [SQLValue])])] = []
        var batchIndex: [[String]: Int] = [:]
        var buffer = ColumnValues(capacity: table.columns.count)
        var names: [String] = []
        for index in batchIndices {
            buffer.removeAll()
            operations.encode(entries[index].object, into: &buffer)
            names.removeAll(keepingCapacity: true)
            var row: [SQLValue] = []
            row.reserveCapacity(buffer.names.count)
            for (name, value) in zip(buffer.names, buffer.values) where !(value == .null && generated.contains(name)) {
                names.append(name)
                row.append(value)
            }
            if let last = batches.indices.last, batches[last].names == names {
                batches[last].rows.append((index, row))
            } else if let position = batchIndex[names] {
                batches[position].rows.append((index, row))
            } else {
                batchIndex[names] = batches.count
                batches.append((names, [(index, row)]))
            }
        }
        let keyNames = table.primaryKey
        for (names, batch) in batches {
            var statement = SQLAsync.insert(into: table)
                .values(names.map { Assignment(column: $0, node: SQLNode(.parameter($0))) })
            // Every column set by the objects, and keys the database gives back as they were sent: nothing to
            // read back.
            let complete = table.columns.allSatisfy { names.contains($0.name) }
                && Self.keysRoundTrip(table, names: names, batch.lazy.map(\.values))
            if !complete {
                statement.returningItems = table.columns.map { SelectItem(node: SQLNode(.column(qualifier: nil, name: $0.name)), label: nil) }
            }
            // Each column is one placeholder, in the order of `names`: the values go in as they are, positionally.
            let result = try await run(statement, batch.map(\.values))
            try checkUnchanged(generation)
            byKey.reserveCapacity(adding: batch.count, of: info.type)
            if complete {
                guard result.rowsAffected == batch.count else {
                    throw SQLError(.database, "inserting \(batch.count) \(table.name) rows inserted \(result.rowsAffected)")
                }
                // The values sent are the snapshot (in the model's own encoding), sharing the batch's arrays.
                let keyIndexes = keyNames.map { names.firstIndex(of: $0) }
                for (index, values) in batch {
                    let row = Row(columns: names, values: values)
                    recordInsert(index, row, key: IdentityKey(info.type, row: row, keyIndexes), canonical: true)
                }
            } else {
                guard result.count == batch.count else {
                    throw SQLError(.database, "inserting \(batch.count) \(table.name) rows returned \(result.count)")
                }
                let keyIndexes = keyNames.map { result.columns.firstIndex(of: $0) }
                for ((index, _), row) in zip(batch, result) {
                    try operations.update(entries[index].object, row)
                    // The returned row is the snapshot (compared in the model's encoding if ever needed).
                    recordInsert(index, row, key: IdentityKey(info.type, row: row, keyIndexes), canonical: false)
                }
            }
        }
    }

    /// Whether the primary-key values of rows to insert (values in the order of `names`) come back from the
    /// database exactly as they are: integers in integer columns, text in text columns. A load of the row
    /// then finds the object under the same identity-map key. Other types (a timestamp, a decimal) may come
    /// back written differently, so their rows are read back.
    static func keysRoundTrip(_ table: Table, names: [String], _ rows: some Sequence<[SQLValue]>) -> Bool {
        var checks: [(position: Int, isText: Bool)] = []
        for name in table.primaryKey {
            guard let position = names.firstIndex(of: name),
                let type = table.columns.first(where: { $0.name == name })?.type
            else { return false }
            switch type {
            case .int16, .int32, .int64: checks.append((position, false))
            case .text: checks.append((position, true))
            default: return false
            }
        }
        for row in rows {
            for (position, isText) in checks {
                switch row[position] {
                case .integer where !isText, .text where isText: continue
                default: return false
                }
            }
        }
        return true
    }

    /// An inserted entry: its snapshot, and its key in the identity map.
    private func recordInsert(_ index: Int, _ snapshot: Row, key: IdentityKey, canonical: Bool) {
        setSnapshot(index, snapshot, canonical: canonical)
        assign(key, to: index)
    }

    /// Updates the changed columns of persistent objects: objects of one table changing the same columns go
    /// in one batch; a versioned object's update applies only to the version it read.
    private func update(
        _ dirty: [(index: Int, values: ColumnValues, changed: [String])], generation: Int, isolation: isolated (any Actor)? = #isolation
    ) async throws {
        /// One model (models sharing a table are written apart, each with its own encoding) and the columns
        /// that changed.
        struct BatchKey: Hashable {
            let model: ObjectIdentifier
            let changed: [String]
        }
        var batches: [BatchKey: [(index: Int, values: ColumnValues)]] = [:]
        var order: [BatchKey] = []
        for (index, values, changed) in dirty {
            let info = entries[index].info
            let key = BatchKey(model: ObjectIdentifier(info), changed: changed.filter { $0 != info.versionColumn })
            if batches[key] == nil { order.append(key) }
            batches[key, default: []].append((index, values))
        }
        for key in order {
            guard let batch = batches[key], let first = batch.first?.index else { continue }
            let info = entries[first].info
            let table = info.table
            let version = info.versionColumn
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
            let sets = batch.map { index, values -> [SQLValue] in
                let snapshot = snapshot(index)
                var set = key.changed.map { values[$0] ?? .null }
                if version != nil { set.append(.integer(1)) }  // the version's increment
                set += keyNames.map { snapshot?[$0] ?? .null }
                if let version { set.append(snapshot?[version] ?? .null) }
                return set
            }
            let result = try await run(statement, sets)
            try checkUnchanged(generation)
            let written = version == nil ? result.rowsAffected : result.count
            guard written == batch.count else {
                throw SQLError(
                    .staleData,
                    version == nil
                        ? "\(batch.count - written) of the \(batch.count) \(table.name) rows being updated are gone"
                        : "\(batch.count - written) of the \(batch.count) \(table.name) rows being updated were changed or deleted since they were read (their version moved on)")
            }
            if version != nil {
                for ((index, _), row) in zip(batch, result) { try info.operations.update(entries[index].object, row) }
            }
            let keyChanged = key.changed.contains(where: keyNames.contains)
            for (index, values) in batch {
                setSnapshot(index, version == nil ? values.row : info.operations.encode(entries[index].object).row, canonical: true)
                if keyChanged {
                    // A new primary key: the identity map follows it.
                    if let old = self.key(of: index), byKey[old] == index { byKey[old] = nil }
                    assign(IdentityKey(info.type, keyNames.map { values[$0] ?? .null }), to: index)
                }
            }
        }
    }

    /// Deletes persistent objects of one model in one batch (a versioned object only at the version it read).
    private func delete(_ batch: [Int], generation: Int, isolation: isolated (any Actor)? = #isolation) async throws {
        guard let first = batch.first else { return }
        let info = entries[first].info
        let table = info.table
        let keyNames = table.primaryKey
        let version = info.versionColumn
        var statement = SQLAsync.delete(from: table)
        statement.conditions.append(Self.keyCondition(table, keyNames, keyNames.map { SQLNode(.parameter("key." + $0)) }))
        if let version {
            statement.conditions.append(
                SQLNode(.binary(SQLNode(.column(qualifier: table.reference, name: version)), "=", SQLNode(.parameter("version")))))
        }
        let sets = batch.map { index -> [SQLValue] in
            let snapshot = snapshot(index)
            var set = keyNames.map { snapshot?[$0] ?? .null }
            if let version { set.append(snapshot?[version] ?? .null) }
            return set
        }
        let result = try await run(statement, sets)
        try checkUnchanged(generation)
        guard result.rowsAffected == batch.count else {
            throw SQLError(
                .staleData,
                "\(batch.count - result.rowsAffected) of the \(batch.count) \(table.name) rows being deleted were already gone"
                    + (version == nil ? "" : " or changed since they were read"))
        }
        for index in batch {
            forget(index)
            deletedObjects[ObjectIdentifier(entries[index].object)] = entries[index].object
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
        // Index loops: the cascades append entries (objects they add) and flag others while they run.
        var index = 0
        while index < entries.count {
            if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                entries[index].info.operations.cascadeSave(entries[index].object, self)
            }
            index += 1
        }
        // Objects some live owner holds: taken out of one collection and put in another, a child is moved,
        // not orphaned.
        held.removeAll(keepingCapacity: true)
        for index in entries.indices where !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
            for object in entries[index].info.operations.heldObjects(entries[index].object) { held.insert(ObjectIdentifier(object)) }
        }
        index = 0
        while index < entries.count {
            if !entries[index].detached && relations[ObjectIdentifier(entries[index].object)] != nil {
                try entries[index].info.operations.handleRemoved(entries[index].object, self)
            }
            index += 1
        }
    }

    /// The delete cascade: children of deleted objects, loaded when they are not (one query per relationship
    /// and type), deleted too — to a fixed point.
    private func cascadeDeletes(isolation: isolated (any Actor)? = #isolation) async throws {
        var done = Set<ObjectIdentifier>()
        while true {
            var groups: [ObjectIdentifier: (info: ModelInfo, objects: [AnyObject])] = [:]
            for index in entries.indices where entries[index].deleted && !entries[index].detached && entries[index].info.cascadesDeletes
                && done.insert(ObjectIdentifier(entries[index].object)).inserted {
                let info = entries[index].info
                groups[ObjectIdentifier(info), default: (info, [])].objects.append(entries[index].object)
            }
            if groups.isEmpty { return }
            for (info, objects) in groups.values {
                try await info.operations.cascadeDelete(objects, self, isolation: isolation)
            }
        }
    }

    /// Sets foreign keys from relationships (a child's key from its parent's, which an insert may just have
    /// generated). Relationships changed since their load go last, so that where a child's parent
    /// (many-to-one) and a parent's collection (one-to-many) disagree about the same foreign key, the side
    /// that was changed wins: a child moved to another collection is moved even though its own `parent` still
    /// holds the old one, and the reverse.
    private func synchronizeKeys() throws {
        for changed in [false, true] {
            var index = 0
            while index < entries.count {
                if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                    try entries[index].info.operations.synchronize(entries[index].object, self, changed: changed)
                }
                index += 1
            }
        }
    }

    /// The many-to-many association rows to insert and delete.
    private func linkChanges() throws -> [LinkChange] {
        var changes: [LinkChange] = []
        var index = 0
        while index < entries.count {
            if !entries[index].detached && entries[index].info.hasRelationships {
                let entry = entries[index]
                changes += try entry.info.operations.linkChanges(
                    entry.object, deleted: entry.deleted, persistent: entry.store >= 0, self)
            }
            index += 1
        }
        return changes
    }

    /// Remembers what every loaded relationship holds, for the next flush to compare with.
    private func recordRelationships() {
        var index = 0
        while index < entries.count {
            if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                entries[index].info.operations.record(entries[index].object, self)
            }
            index += 1
        }
    }

    /// Records what a relationship of a tracked owner holds now (after a load or a flush).
    func record(_ owner: AnyObject, _ property: AnyKeyPath, _ related: [AnyObject]) {
        guard index(of: owner) != nil else { return }
        relations[ObjectIdentifier(owner), default: [:]][property] = related
    }

    /// What a relationship of a tracked owner held at its load or the last flush (nil: never loaded through
    /// the session).
    func recorded(_ owner: AnyObject, _ property: AnyKeyPath) -> [AnyObject]? {
        index(of: owner) == nil ? nil : relations[ObjectIdentifier(owner)]?[property]
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
        entries.removeAll()
        stores.removeAll()
        storeUsers.removeAll()
        generation += 1
        byKey = IdentityMap()
        otherKeys.removeAll()
        relations.removeAll()
        byObject.removeAll()
        indexedCount = 0
        detachedCount = 0
        deletedObjects.removeAll()
    }

    // MARK: Bookkeeping

    /// A model type and a primary key. A one-column integer key (the usual case) is held and hashed as a
    /// plain integer: no array, no enum to switch on.
    struct IdentityKey: Hashable {
        let type: ObjectIdentifier
        /// The key when it is one integer column.
        let integer: Int64
        /// Any other key's values (nil for a one-integer key).
        let values: [SQLValue]?

        init(_ type: Any.Type, _ key: [SQLValue]) {
            if key.count == 1, case .integer(let value) = key[0] {
                self.init(type, integer: value, values: nil)
            } else {
                self.init(type, integer: 0, values: key)
            }
        }

        /// A one-integer key.
        init(_ type: Any.Type, integer: Int64) { self.init(type, integer: integer, values: nil) }

        private init(_ type: Any.Type, integer: Int64, values: [SQLValue]?) {
            self.type = ObjectIdentifier(type)
            self.integer = integer
            self.values = values
        }

        /// The key in a row, at `indexes` (a missing column is NULL); no array for a one-integer key.
        init(_ type: Any.Type, row: borrowing Row, _ indexes: [Int?]) {
            if indexes.count == 1, let index = indexes[0], index >= 0, index < row.columns.count,
                case .integer(let value) = row.storage[row.offset + index] {
                self.init(type, integer: value, values: nil)
            } else {
                self.init(type, indexes.map { index in index.flatMap { row[$0] } ?? .null })
            }
        }

        var hasNull: Bool { values?.contains(.null) ?? false }

        static func == (lhs: IdentityKey, rhs: IdentityKey) -> Bool {
            lhs.type == rhs.type && lhs.integer == rhs.integer && lhs.values == rhs.values
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(type)
            if let values { hasher.combine(values) } else { hasher.combine(integer) }
        }
    }

    enum KeyKind: UInt8 {
        case none, integer, other
    }

    /// The identity-map key of an entry.
    private func key(of index: Int) -> IdentityKey? {
        switch entries[index].keyKind {
        case .none: nil
        case .integer: IdentityKey(entries[index].info.type, integer: entries[index].keyInteger)
        case .other: otherKeys[ObjectIdentifier(entries[index].object)]
        }
    }

    /// Maps `key` to an entry. An entry the map had under that key (its row changed or deleted behind the
    /// session's back) loses it, so that no later rebuild of the map gives the key back to it.
    private func assign(_ key: IdentityKey, to index: Int) {
        if let previous = byKey[key], previous != index, previous < entries.count {
            entries[previous].keyKind = .none
            otherKeys[ObjectIdentifier(entries[previous].object)] = nil
        }
        setKey(of: index, key)
        byKey[key] = index
    }

    private func setKey(of index: Int, _ key: IdentityKey) {
        let id = ObjectIdentifier(entries[index].object)
        if key.values == nil {
            entries[index].keyKind = .integer
            entries[index].keyInteger = key.integer
            otherKeys[id] = nil
        } else {
            entries[index].keyKind = .other
            otherKeys[id] = key
        }
    }

    /// Primary key → entry index, for every tracked object with a key.
    struct IdentityMap {
        /// One-integer keys (the usual case), a map per model type: the one used last is held apart, so that a
        /// loop over one type's rows hashes a plain integer once per row.
        private var integers: [ObjectIdentifier: [Int64: Int]] = [:]
        private var hotType: ObjectIdentifier?
        private var hot: [Int64: Int] = [:]
        /// Every other key.
        private var others: [IdentityKey: Int] = [:]

        /// Makes `type`'s map the one held apart.
        private mutating func select(_ type: ObjectIdentifier) {
            guard hotType != type else { return }
            if let hotType { integers[hotType] = hot }
            hot = integers.removeValue(forKey: type) ?? [:]
            hotType = type
        }

        subscript(key: IdentityKey) -> Int? {
            get {
                if key.values != nil { return others[key] }
                return key.type == hotType ? hot[key.integer] : integers[key.type]?[key.integer]
            }
            set {
                if key.values != nil {
                    others[key] = newValue
                } else {
                    select(key.type)
                    hot[key.integer] = newValue
                }
            }
        }

        /// The index `key` has, or — when it has none — nil, `key` now mapped to `index`: one hash and probe for
        /// a new key (the usual case). (`map[key, default:]` would allocate its autoclosure.)
        mutating func claim(_ key: IdentityKey, for index: Int) -> Int? {
            if key.values == nil { return claim(key.type, key.integer, for: index) }
            guard let old = others.updateValue(index, forKey: key) else { return nil }
            others[key] = old
            return old
        }

        /// ``claim(_:for:)`` of the one-integer key `integer` of `type`.
        mutating func claim(_ type: ObjectIdentifier, _ integer: Int64, for index: Int) -> Int? {
            select(type)
            guard let old = hot.updateValue(index, forKey: integer) else { return nil }
            hot[integer] = old
            return old
        }

        /// Room for `count` more one-integer keys of `type`.
        mutating func reserveCapacity(adding count: Int, of type: Any.Type) {
            select(ObjectIdentifier(type))
            hot.reserveCapacity(hot.count + count)
        }

        mutating func removeAll() {
            integers.removeAll(keepingCapacity: true)
            hot.removeAll(keepingCapacity: true)
            others.removeAll(keepingCapacity: true)
        }
    }

    /// One tracked object: a value stored inline in the session's array (no allocation of its own).
    struct Entry {
        let object: AnyObject
        /// Its model's operations and table, shared by the model's entries. Not retained per entry:
        /// `unowned(unsafe)` is safe because every `ModelInfo` is created by ``Session/info(_:)`` and held by
        /// the session's `models` until the session itself goes, and entries live only in the session's
        /// private `entries` array (no entry or copy of one is ever handed out), so no entry outlives its info.
        unowned(unsafe) let info: ModelInfo
        /// Its snapshot, the values last read or written: row `offset` of `stores[store]` (-1: none, an object
        /// still to insert). A result's rows share one store.
        var store = -1
        var offset = 0
        /// Whether `stores[store]` is this entry's alone (replaced in place when the snapshot changes).
        var ownsStore = false
        /// Whether the snapshot is in the model's own encoding (else it is the row as the database returned
        /// it, which may encode a value differently: an integer for a `Bool` in SQLite, say).
        var canonical = true
        /// The key the identity map has it under: none until it is loaded or inserted; one integer, held here;
        /// or another key, held in the session's `otherKeys`. (Only `object` is reference-counted: an entry
        /// is copied and destroyed with one retain or release.)
        var keyKind = KeyKind.none
        var keyInteger: Int64 = 0
        var deleted = false
        /// No longer tracked (forgotten, deleted and flushed); dropped at the next compaction.
        var detached = false

        init(_ object: AnyObject, _ info: ModelInfo) {
            self.object = object
            self.info = info
        }

        init(
            _ object: AnyObject, _ info: ModelInfo, keyKind: KeyKind, keyInteger: Int64, store: Int, offset: Int, ownsStore: Bool,
            canonical: Bool
        ) {
            self.object = object
            self.info = info
            self.keyKind = keyKind
            self.keyInteger = keyInteger
            self.store = store
            self.offset = offset
            self.ownsStore = ownsStore
            self.canonical = canonical
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
    func recode(_ snapshot: Row) -> ColumnValues?
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
    /// `M.relationships`, built once per session and model (not per object at every flush).
    let relationships: [any RelationshipInternals<M>] = M.relationships.compactMap { $0 as? any RelationshipInternals<M> }
    var versionColumn: String? { M.versionColumn?.name }
    var hasRelationships: Bool { !relationships.isEmpty }
    var cascadesDeletes: Bool { relationships.contains { $0.cascade.contains(.delete) } }

    // `unsafeDowncast`: an entry is created only with an `M` and its `Operations<M>` together.
    func encode(_ object: AnyObject) -> ColumnValues { unsafeDowncast(object, to: M.self).encoded() }
    func encode(_ object: AnyObject, into values: inout ColumnValues) { unsafeDowncast(object, to: M.self).encode(to: &values) }
    func update(_ object: AnyObject, _ row: Row) throws { try unsafeDowncast(object, to: M.self).update(from: row) }
    func recode(_ snapshot: Row) -> ColumnValues? { (try? M(row: snapshot))?.encoded() }

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
