// The flush: the unit of work's plan (UnitOfWork) executed in order — inserts, updates of the changed
// columns, association rows, deletes — and the change check that finds what to update.

extension Session {
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
            let plan = try planFlush(inserts: inserts, deletes: deletes)
            for table in plan.inserts {
                for level in table {
                    if withRelationships { try synchronizeKeys() }
                    for batch in level { try await insert(batch, generation: generation) }
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
            for table in plan.deletes {
                for level in table {
                    for batch in level { try await delete(batch, generation: generation) }
                }
            }
            if withRelationships { recordRelationships() }
        } catch {
            // Inside a savepoint, the savepoint is rolled back (by `withSavepoint`), not the transaction.
            if savepointDepth == 0 { await rollback() }
            throw error
        }
    }

    /// The unit of work's plan for these entries (see ``UnitOfWork``): what it needs to know of them, as
    /// values, gathered only for the tables that reference themselves.
    func planFlush(inserts: [Int], deletes: [Int]) throws(SQLError) -> FlushPlan {
        var models: [UnitOfWork.ModelTable] = []
        var modelIndex: [ObjectIdentifier: Int] = [:]
        var previous: ModelInfo?
        var previousIndex = 0
        func change(_ entry: Int) -> UnitOfWork.Change {
            let info = entries[entry].info
            // Consecutive entries of one model (the usual case) cost no lookup.
            if info !== previous {
                previous = info
                if let known = modelIndex[ObjectIdentifier(info)] {
                    previousIndex = known
                } else {
                    previousIndex = models.count
                    modelIndex[ObjectIdentifier(info)] = models.count
                    models.append(UnitOfWork.ModelTable(id: ObjectIdentifier(info), table: info.table))
                }
            }
            return UnitOfWork.Change(entry: entry, model: previousIndex)
        }
        let insertChanges = inserts.map(change)
        let deleteChanges = deletes.map(change)
        return try UnitOfWork.plan(
            models: models, inserts: insertChanges, deletes: deleteChanges,
            insertReferences: { batch in
                var position: [ObjectIdentifier: Int] = [:]
                for (place, change) in batch.enumerated() { position[ObjectIdentifier(entries[change.entry].object)] = place }
                var references = UnitOfWork.SelfReferences(
                    values: batch.map { entries[$0.entry].info.operations.encode(entries[$0.entry].object).row })
                for (place, change) in batch.enumerated() where entries[change.entry].info.hasRelationships {
                    let entry = entries[change.entry]
                    let (before, after) = entry.info.operations.insertNeighbours(entry.object)
                    for parent in before { if let other = position[ObjectIdentifier(parent)] { references.links.append((other, place)) } }
                    for child in after { if let other = position[ObjectIdentifier(child)] { references.links.append((place, other)) } }
                }
                return references
            },
            deleteReferences: { batch in batch.map { snapshot($0.entry) ?? Row(columns: [], values: []) } })
    }

    /// - Throws: ``SQLError/Kind/misuse`` when the session's entries moved since `generation` (another task
    ///   rolled it back or flushed it while this flush waited).
    func checkUnchanged(_ generation: Int) throws(SQLError) {
        guard generation == self.generation else {
            throw SQLError(.misuse, "the session was rolled back or flushed by another task during this flush: use one session per task")
        }
    }

    /// The persistent entries whose objects' encoded values differ from their snapshot, with the values and
    /// the changed columns.
    func dirtyEntries() -> [(index: Int, values: ColumnValues, changed: [String])] {
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
    func changes(_ index: Int, into values: inout ColumnValues) -> [String] {
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
}
