// Persistence: the statements a flush runs for a batch of entries (INSERT, UPDATE, DELETE), and what they
// read back into the objects and snapshots.

extension Session {
    /// Inserts new objects of one model: objects that set the same columns go in one batch (`executeMany`:
    /// PostgreSQL pipeline mode, one round trip). A batch that leaves a column to the database (a generated
    /// key, a default) or has keys the database may write differently (``keysRoundTrip(_:names:_:)``)
    /// returns its rows, which update the objects; a batch that sets every column, with integer or text keys,
    /// returns nothing, and what it sent is the snapshot.
    func insert(_ batchIndices: [Int], generation: Int, isolation: isolated (any Actor)? = #isolation) async throws {
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
    func recordInsert(_ index: Int, _ snapshot: Row, key: IdentityKey, canonical: Bool) {
        setSnapshot(index, snapshot, canonical: canonical)
        assign(key, to: index)
    }

    /// Updates the changed columns of persistent objects: objects of one table changing the same columns go
    /// in one batch; a versioned object's update applies only to the version it read.
    func update(
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
    func delete(_ batch: [Int], generation: Int, isolation: isolated (any Actor)? = #isolation) async throws {
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
}
