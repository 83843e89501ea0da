// Loading: objects by key or query, through the identity map; refresh and merge.

extension Session {
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
        let table = info(M.self).table  // built once per session, not per call
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
    func added<M: Model>(_ type: M.Type, _ names: [String], _ key: [SQLValue]) -> M? {
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
        let store = stores.add(Row(columns: first.columns, storage: first.storage, offset: 0), users: 0)
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
            } else {
                stores.setUsers(store, entries.count - tracked)
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
        if created { _ = stores.add(row, users: 1) }
        return object
    }

    /// The tracked object for a row, and whether it is new: a new entry's snapshot is row `offset` of
    /// `stores[store]` (a store of its own when `ownsStore`, else a result's, shared).
    static func materialize<M: Model>(
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
}
