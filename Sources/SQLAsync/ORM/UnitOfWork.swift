/// The order a flush writes in: which rows go first, in which batches. Pure — it sees a flush's changes as
/// values (each row's model and table; for a table that references itself, the rows' values and the
/// relationships between them) and returns a ``FlushPlan`` — so it is tested without a database.
///
/// The rules: tables parents before children (by their foreign keys) for inserts, and the reverse for
/// deletes; inside a table that references itself (a tree), inserts a level at a time, parents first, and
/// deletes children first; inside a level, one batch per model (models may share a table, each writing
/// with its own encoding).
enum UnitOfWork {
    /// A model the flush writes rows of.
    struct ModelTable {
        /// Tells models apart (the session's `ModelInfo`).
        let id: ObjectIdentifier
        let table: Table
    }

    /// A row to insert or delete: the session's entry index, and its model (an index into the models).
    struct Change: Equatable {
        let entry: Int
        let model: Int
    }

    /// What the plan needs to know of the rows of a table that references itself.
    struct SelfReferences {
        /// Each row's values (in the order of the changes given), for the keys and foreign keys.
        var values: [Row]
        /// (parent, child) positions the session's relationships link, whatever the keys say yet.
        var links: [(Int, Int)] = []
    }

    /// Plans a flush.
    ///
    /// - Parameters:
    ///   - models: the models of the changes.
    ///   - inserts: the rows to insert, in the order they were added.
    ///   - deletes: the rows to delete.
    ///   - insertReferences: for the new rows of a table that references itself, their values and links (asked
    ///     only for such tables, so that other rows are never encoded for planning).
    ///   - deleteReferences: for the rows to delete of such a table, their values as last read or written.
    /// - Throws: ``SQLError/Kind/misuse`` for a table without a primary key, a cycle of foreign keys between
    ///   tables, or rows of one table that reference each other in a cycle.
    static func plan(
        models: [ModelTable], inserts: [Change], deletes: [Change],
        insertReferences: ([Change]) -> SelfReferences,
        deleteReferences: ([Change]) -> [Row]
    ) throws(SQLError) -> FlushPlan {
        let tables = try tableOrder(models: models, used: inserts + deletes)
        var plan = FlushPlan(tables: tables)
        for name in tables {
            let batch = tables.count == 1 ? inserts : inserts.filter { models[$0.model].table.name == name }
            guard let first = batch.first else { continue }
            let table = models[first.model].table
            let levels = try insertLevels(batch, table: table, references: insertReferences)
            plan.inserts.append(levels.map { byModel($0) })
        }
        for name in tables.reversed() {
            let batch = tables.count == 1 ? deletes : deletes.filter { models[$0.model].table.name == name }
            guard let first = batch.first else { continue }
            let table = models[first.model].table
            let levels = try deleteLevels(batch, table: table, references: deleteReferences)
            plan.deletes.append(levels.map { byModel($0) })
        }
        return plan
    }

    /// The tables of the changes, parents before children.
    static func tableOrder(models: [ModelTable], used changes: [Change]) throws(SQLError) -> [String] {
        var tables: [String: Table] = [:]
        var previous = -1
        for change in changes where change.model != previous {
            // Consecutive rows of one model (the usual case) cost no lookup.
            previous = change.model
            let table = models[change.model].table
            if tables[table.name] == nil { tables[table.name] = table }
        }
        for table in tables.values where table.primaryKey.isEmpty {
            throw SQLError(.misuse, "the table \(table.name) has no primary key: a session cannot write its rows")
        }
        if tables.count <= 1 { return Array(tables.keys) }
        return try Metadata(tables: tables.keys.sorted().compactMap { tables[$0] }).sortedTables().map(\.name)
    }

    /// Changes grouped by model, in order of first appearance (one group in the usual case): the batches.
    static func byModel(_ changes: [Change]) -> [[Int]] {
        guard let first = changes.first else { return [] }
        if changes.allSatisfy({ $0.model == first.model }) { return [changes.map(\.entry)] }
        var groups: [[Int]] = []
        var position: [Int: Int] = [:]
        for change in changes {
            if let existing = position[change.model] {
                groups[existing].append(change.entry)
            } else {
                position[change.model] = groups.count
                groups.append([change.entry])
            }
        }
        return groups
    }

    /// The columns of `table` that reference its own table (`parent_id` of a tree), with the column each
    /// references.
    static func selfReferences(_ table: Table) -> [(column: String, references: String)] {
        table.columns.compactMap { column in
            guard let target = column.reference, target.table == table.name else { return nil }
            return (column.name, target.column)
        }
    }

    /// New rows of one table in insert order: all at once, or — when the table references itself — in
    /// levels, each row after the rows it points to (through a relationship the session follows, or a key
    /// already set).
    static func insertLevels(
        _ batch: [Change], table: Table, references: ([Change]) -> SelfReferences
    ) throws(SQLError) -> [[Change]] {
        guard batch.count > 1 else { return [batch] }
        let columns = selfReferences(table)
        guard !columns.isEmpty else { return [batch] }
        let rows = references(batch)
        let edges = rows.links + keyEdges(rows.values, columns)
        guard let levels = levels(count: batch.count, edges: edges) else {
            throw SQLError(.misuse, "the new \(table.name) rows reference each other in a cycle: insert one first, then link it")
        }
        return levels.map { $0.map { batch[$0] } }
    }

    /// Rows of one table to delete: all at once, or — when the table references itself — children before
    /// their parents (by the foreign keys as last read or written).
    static func deleteLevels(_ batch: [Change], table: Table, references: ([Change]) -> [Row]) throws(SQLError) -> [[Change]] {
        guard batch.count > 1 else { return [batch] }
        let columns = selfReferences(table)
        guard !columns.isEmpty else { return [batch] }
        guard let levels = levels(count: batch.count, edges: keyEdges(references(batch), columns)) else {
            throw SQLError(.misuse, "the \(table.name) rows to delete reference each other in a cycle: unlink one first")
        }
        return levels.reversed().map { $0.map { batch[$0] } }
    }

    /// (parent, child) for each row whose self-referencing column holds another row's key.
    static func keyEdges(_ values: [Row], _ references: [(column: String, references: String)]) -> [(Int, Int)] {
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
}

/// What a flush writes, in order: the result of ``UnitOfWork/plan(models:inserts:deletes:insertReferences:deleteReferences:)``.
struct FlushPlan: Equatable {
    /// The tables written, parents before children.
    var tables: [String]
    /// The inserts, a table at a time (parents first), each table a level at a time (one level unless it
    /// references itself), each level a batch per model: the session's entry indices.
    var inserts: [[[[Int]]]] = []
    /// The deletes, a table at a time (children first), each table a level at a time (children first),
    /// each level a batch per model.
    var deletes: [[[[Int]]]] = []

    init(tables: [String]) { self.tables = tables }
}
