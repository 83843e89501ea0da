import CLibPQ

/// The prepared statements of one connection: SQL text and parameter types → server-side name, least recently
/// used evicted first.
struct StatementCache {
    /// Statements kept per connection; the least recently used beyond this is deallocated.
    static let capacity = 128

    /// A prepared statement: its server-side name, and whether its results come in binary format.
    struct Entry: Sendable {
        let name: String
        var binaryResults = false
        /// The parameter types the server described, when the statement binds integers (which are checked
        /// against them before each run).
        var parameterTypes: [Oid]?
    }

    private var names: [String: Entry] = [:]
    private var recency: [String] = []
    /// Names dropped from the cache whose statements still exist on the server.
    private var orphans: [String] = []
    private var counter = 0
    /// Unnamed mode (behind a pooler in transaction mode): entries keep what the server described, and no
    /// statement exists on the server by name, so nothing is ever deallocated.
    var unnamed = false

    /// The cache key: the text and the parameter types (a statement is prepared for its types).
    static func key(_ sql: String, _ binds: [SQLValue]) -> String {
        var key = sql
        key.append("\u{0}")
        for bind in binds { key.append(String(PGHandle.typeOID(bind))); key.append(",") }
        return key
    }

    /// The statement prepared for `key`, if any (marked most recently used).
    mutating func lookUp(_ key: String) -> Entry? {
        guard let entry = names[key] else { return nil }
        if recency.last != key, let index = recency.firstIndex(of: key) {
            recency.remove(at: index)
            recency.append(key)
        }
        return entry
    }

    /// From now on, ask for `key`'s results in binary format.
    mutating func useBinaryResults(_ key: String) { names[key]?.binaryResults = true }

    /// Records the parameter types the server described for `key`.
    mutating func setParameterTypes(_ key: String, _ types: [Oid]) { names[key]?.parameterTypes = types }

    /// A new name for `key`, and — when `deallocating` — the names of statements to deallocate on the server:
    /// the one evicted to make room, and any dropped from the cache since.
    mutating func insert(_ key: String, deallocating: Bool = true) -> (name: String, deallocate: [String]) {
        counter += 1
        let name = "anyruntime_\(counter)"
        if names.count >= Self.capacity, !recency.isEmpty, let evicted = names.removeValue(forKey: recency.removeFirst()), !unnamed {
            orphans.append(evicted.name)
        }
        names[key] = Entry(name: name)
        recency.append(key)
        guard deallocating else { return (name, []) }
        defer { orphans.removeAll() }
        return (name, orphans)
    }

    /// Drops `key`; with `deallocate`, its statement is deallocated on the server with the next prepare.
    mutating func remove(_ key: String, deallocate: Bool = false) {
        guard let entry = names.removeValue(forKey: key) else { return }
        recency.removeAll { $0 == key }
        if deallocate, !unnamed { orphans.append(entry.name) }
    }

    /// Keeps the entries and pending deallocations whose statements the server still has (`existing`);
    /// `pending` are deallocations that were being sent and are due again if they still exist.
    mutating func keepOnly(_ existing: Set<String>, pending: [String]) {
        for (key, entry) in names where !existing.contains(entry.name) { remove(key) }
        orphans = (orphans + pending).filter { existing.contains($0) }
    }

    /// Forgets every statement (the server has dropped them).
    mutating func removeAll() {
        names.removeAll()
        recency.removeAll()
        orphans.removeAll()
    }

    /// Whether `error` means the prepared statement is gone (26000) or its plan no longer fits (0A000).
    static func isStale(_ error: SQLError) -> Bool {
        error.sqlState == "26000" || (error.sqlState == "0A000" && error.message.contains("cached plan"))
    }
}
