/// A unit of work over one connection: objects loaded or added are tracked by primary key (one object per key:
/// the identity map), their changes are written at ``flush(isolation:)`` — inserts parents first, updates of the
/// changed columns only, deletes children first, each kind batched — inside the session's transaction, which
/// ``commit(isolation:)`` ends.
///
/// One session per task (it is not `Sendable`); ``Engine/withSession(readOnly:isolation:_:)`` scopes one.
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
    var transaction: Transaction?
    /// Every tracked object, in the order it was tracked, stored inline (no allocation per object). A
    /// forgotten entry is flagged `detached` and stays until enough of them are dropped together
    /// (``compact()``): removing each at once would make forgetting n objects O(n²).
    var entries: [Entry] = []
    var detachedCount = 0
    /// The entries' snapshots (an entry refers to a row of one of them).
    var stores = SnapshotStores()
    /// Changes whenever entry indices do (a compaction, a rollback): a flush that finds it changed after an
    /// `await` stops rather than use stale indices (another task used the session meanwhile).
    var generation = 0
    /// Identity map: the entry of each primary key.
    var byKey = IdentityMap()
    /// The keys of tracked objects whose key is not one integer (an entry holds an integer key itself).
    var otherKeys: [ObjectIdentifier: IdentityKey] = [:]
    /// What each loaded relationship of a tracked object held at its load or the last flush.
    var relations: [ObjectIdentifier: [AnyKeyPath: [AnyObject]]] = [:]
    /// The entries by object, for `entries[..<indexedCount]`: objects loaded by a query are indexed only when
    /// a lookup by object needs them (a read-only session never pays for it).
    var byObject: [ObjectIdentifier: Int] = [:]
    var indexedCount = 0
    /// Objects deleted by a flush of this session (held, so that their identifiers stay theirs).
    var deletedObjects: [ObjectIdentifier: AnyObject] = [:]
    /// What the session knows of each model type it met.
    var models: [ObjectIdentifier: ModelInfo] = [:]
    var savepointDepth = 0
    /// During a flush: the objects live owners' loaded relationships hold.
    var held = Set<ObjectIdentifier>()

    /// Whether queries flush pending changes first (default: on). ``get(_:key:isolation:)`` never does.
    public var autoflush = true

    /// Keys per `IN` list when relationships are loaded: SQLite allows 32,766 parameters in a statement,
    /// PostgreSQL 65,535; more keys take more queries.
    var inListLimit = 10_000

    /// Whether the session's transaction is read-only (``Engine/withSession(readOnly:isolation:_:)`` with
    /// `readOnly`: a flush that writes then fails with the database's error).
    public let readOnly: Bool

    public init(connection: Connection, readOnly: Bool = false) {
        self.connection = connection
        self.readOnly = readOnly
    }

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
    func indexAll() {
        guard indexedCount < entries.count else { return }
        byObject.reserveCapacity(entries.count)
        for index in indexedCount..<entries.count where !entries[index].detached {
            byObject[ObjectIdentifier(entries[index].object)] = index
        }
        indexedCount = entries.count
    }

    /// The index of a tracked object's entry.
    func index(of object: AnyObject) -> Int? {
        indexAll()
        return byObject[ObjectIdentifier(object)]
    }

    /// Drops forgotten entries once they are at least half of them (loops skip them until then), keeping the
    /// indexed ones a prefix; the maps follow the entries' new places.
    func compact() {
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
        var used = entries.map(\.store)
        stores.compact(&used)
        for index in entries.indices { entries[index].store = used[index] }
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
    var liveStoreCount: Int { stores.liveCount }

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

    func markDeleted(_ index: Int) {
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

    func forget(_ index: Int) {
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
            stores.release(entries[index].store)
            entries[index].store = -1
            entries[index].ownsStore = false
        }
    }

    // MARK: Transaction

    func beginIfNeeded(isolation: isolated (any Actor)? = #isolation) async throws {
        if transaction == nil { transaction = try await connection.begin(readOnly: readOnly) }
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

    func detachAll() {
        entries.removeAll()
        stores.removeAll()
        generation += 1
        byKey = IdentityMap()
        otherKeys.removeAll()
        relations.removeAll()
        byObject.removeAll()
        indexedCount = 0
        detachedCount = 0
        deletedObjects.removeAll()
    }
}
