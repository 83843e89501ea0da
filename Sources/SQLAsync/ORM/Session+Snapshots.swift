// Snapshot storage: the rows objects were loaded from or last written as, shared by a result's entries,
// released as soon as no entry uses them.

/// The session's snapshot stores: the results objects were loaded from (one for all of a result's entries,
/// which keep their row's offset), and the rows of single entries (what an insert sent or read back, an
/// update's values, a refresh's or a re-encoded row). Each counts the entries using it: a store no entry uses
/// any more is emptied at once (its result's memory goes), its slot dropped at the next compaction.
struct SnapshotStores {
    private var rows: [Row] = []
    private var users: [Int] = []

    /// The stores made so far (the index the next one gets).
    var count: Int { rows.count }

    /// The stores still holding rows (for tests).
    var liveCount: Int { rows.filter { !$0.columns.isEmpty }.count }

    subscript(store: Int) -> Row { rows[store] }

    /// A new store used by `users` entries; its index.
    mutating func add(_ row: Row, users count: Int) -> Int {
        rows.append(row)
        users.append(count)
        return rows.count - 1
    }

    /// Replaces the rows of a store one entry owns.
    mutating func replace(_ store: Int, with row: Row) { rows[store] = row }

    /// Sets how many entries use `store` (a result's store, once its entries are made).
    mutating func setUsers(_ store: Int, _ count: Int) { users[store] = count }

    /// Drops the store made last (a result that made no entry).
    mutating func removeLast() {
        rows.removeLast()
        users.removeLast()
    }

    /// One entry less uses the store: with none left, its rows are let go at once.
    mutating func release(_ store: Int) {
        users[store] -= 1
        if users[store] == 0 { rows[store] = Self.noRow }
    }

    /// Keeps only the stores in `used` (an entry's store, or -1 for none), renumbered; `used` is rewritten
    /// with the new numbers.
    mutating func compact(_ used: inout [Int]) {
        var keptRows: [Row] = []
        var keptUsers: [Int] = []
        var renumbered: [Int: Int] = [:]
        for position in used.indices where used[position] >= 0 {
            let old = used[position]
            if let new = renumbered[old] {
                used[position] = new
                keptUsers[new] += 1
            } else {
                renumbered[old] = keptRows.count
                used[position] = keptRows.count
                keptRows.append(rows[old])
                keptUsers.append(1)
            }
        }
        rows = keptRows
        users = keptUsers
    }

    mutating func removeAll() {
        rows.removeAll()
        users.removeAll()
    }

    static let noRow = Row(columns: [], values: [])
}

extension Session {
    /// The snapshot of an entry (nil: still to insert).
    func snapshot(_ index: Int) -> Row? {
        let store = entries[index].store
        guard store >= 0 else { return nil }
        let base = stores[store]
        return Row(columns: base.columns, storage: base.storage, offset: base.offset + entries[index].offset)
    }

    /// Replaces an entry's snapshot with a row of its own (in place when it already has its own store).
    func setSnapshot(_ index: Int, _ row: Row, canonical: Bool) {
        if entries[index].ownsStore {
            stores.replace(entries[index].store, with: row)
        } else {
            if entries[index].store >= 0 { stores.release(entries[index].store) }
            entries[index].store = stores.add(row, users: 1)
            entries[index].ownsStore = true
        }
        entries[index].offset = 0
        entries[index].canonical = canonical
    }

    /// Room for `count` more entries, growing geometrically (an exact reservation per load would copy the
    /// array at each of many small loads).
    static func reserve(_ array: inout [Entry], adding count: Int) {
        let needed = array.count + count
        if needed > array.capacity { array.reserveCapacity(max(needed, array.capacity * 2)) }
    }
}
