// Many-to-many relationships through an association table, and the association rows a flush writes.

/// Many-to-many through an association table: `Post.tags` through `post_tags (post_id, tag_id)`.
///
/// ```swift
/// extension Post {
///     static let tags = ManyToMany(\Post.tags, key: Posts.id, through: PostTags.postID, PostTags.tagID, to: Tags.id)
/// }
/// ```
///
/// Loading runs two queries for any number of owners: the association rows, then the targets not already in
/// the session. At flush (when listed in the owner's ``Model/relationships``): targets the owner holds are
/// added (``Cascade/saveUpdate``), an association row is inserted for each target added to the collection
/// and deleted for each one removed; deleting the owner deletes its association rows.
public struct ManyToMany<Owner: Model, Target: Model, OwnerKey: SQLColumnValue, TargetKey: SQLColumnValue>: Relationship,
    RelationshipInternals
{
    let property: any ReferenceWritableKeyPath<Owner, Related<[Target]>> & Sendable
    let ownerKey: Column<OwnerKey>
    let ownerLink: Column<OwnerKey>
    let targetLink: Column<TargetKey>
    let targetKey: Column<TargetKey>
    public let cascade: Cascade

    /// - Parameters:
    ///   - property: the owner's property that holds the targets.
    ///   - key: the owner's column the association table references.
    ///   - ownerLink: the association table's column referencing the owner.
    ///   - targetLink: the association table's column referencing the target.
    ///   - target: the target's column `targetLink` references.
    ///   - cascade: ``Cascade/saveUpdate`` (the default) adds new targets with the owner.
    public init(
        _ property: any ReferenceWritableKeyPath<Owner, Related<[Target]>> & Sendable, key: Column<OwnerKey>,
        through ownerLink: Column<OwnerKey>, _ targetLink: Column<TargetKey>, to target: Column<TargetKey>,
        cascade: Cascade = .saveUpdate
    ) {
        self.property = property
        ownerKey = key
        self.ownerLink = ownerLink
        self.targetLink = targetLink
        targetKey = target
        self.cascade = cascade
    }

    var propertyKey: AnyKeyPath { property }
    var insertOrder: InsertOrder { .none }

    public func load(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let keys = owners.map { $0.encoded()[ownerKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var links: [SQLValue: [SQLValue]] = [:]
        var targetsByKey: [SQLValue: Target] = [:]
        if !wanted.isEmpty {
            try await session.beginIfNeeded()
            for chunk in session.chunks(of: wanted) {
                var query = select(ownerLink, targetLink)
                query.tables = [Table(ownerLink.qualifier, columns: [])]
                query.conditions.append(SQLNode(.inList(ownerLink.node, chunk.map { SQLNode(.value($0)) }, negated: false)))
                for row in try await session.connection.execute(query) {
                    links[row[0] ?? .null, default: []].append(row[1] ?? .null)
                }
            }
            targetsByKey = try await session.objects(Target.self, column: targetKey.name, targetKey.node, in: links.values.joined())
        }
        for (owner, key) in zip(owners, keys) where session.mayReplace(owner[keyPath: property]) {
            let targets = (links[key] ?? []).compactMap { targetsByKey[$0] }
            owner[keyPath: property] = .loaded(targets)
            session.record(owner, property, targets)
        }
    }

    func loadedObjects(_ owner: Owner) -> [AnyObject]? { owner[keyPath: property].value }

    func cascadeSave(_ owner: Owner, in session: Session) {
        for target in owner[keyPath: property].value ?? [] { session.track(target) }
    }

    func handleRemoved(_ owner: Owner, in session: Session) throws {}
    func synchronize(_ owner: Owner, in session: Session) throws {}

    func linkChanges(_ owner: Owner, deleted: Bool, persistent: Bool, in session: Session) throws -> [LinkChange] {
        let table = Table(ownerLink.qualifier, columns: [])
        let ownerKey = ownerKey.name, targetKey = targetKey.name
        let ownerValue = { owner.encoded()[ownerKey] ?? .null }
        if deleted {
            // Every association row of a deleted owner goes, loaded or not.
            return [LinkChange(table: table, ownerColumn: ownerLink.name, targetColumn: targetLink.name, owner: ownerValue, deleteAll: true)]
        }
        guard let now = owner[keyPath: property].value else { return [] }
        guard let recorded = session.recorded(owner, property) ?? (persistent ? nil : []) else {
            // Its association rows were never read: what to insert and delete is unknown.
            throw SQLError(.misuse, "\(Owner.self)'s many-to-many collection was assigned without being loaded: load it (session.load) before changing it")
        }
        let before = recorded.compactMap { $0 as? Target }
        let had = Set(before.map(ObjectIdentifier.init))
        let has = Set(now.map(ObjectIdentifier.init))
        let added = now.filter { !had.contains(ObjectIdentifier($0)) }
        let removed = before.filter { !has.contains(ObjectIdentifier($0)) }
        guard !added.isEmpty || !removed.isEmpty else { return [] }
        return [LinkChange(
            table: table, ownerColumn: ownerLink.name, targetColumn: targetLink.name, owner: ownerValue,
            added: added.map { target in { target.encoded()[targetKey] ?? .null } },
            removed: removed.map { target in { target.encoded()[targetKey] ?? .null } })]
    }
}

/// Association rows to write at flush, for one owner and one many-to-many relationship. Keys are read when
/// written (after the inserts, so that generated keys are known).
struct LinkChange {
    let table: Table
    let ownerColumn: String
    let targetColumn: String
    let owner: () -> SQLValue
    /// Every row of the owner (deleted).
    var deleteAll = false
    var added: [() -> SQLValue] = []
    var removed: [() -> SQLValue] = []

    func write(_ session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let ownerValue = owner()
        let ownerParameter = SQLNode(.binary(SQLNode(.column(qualifier: table.reference, name: ownerColumn)), "=", SQLNode(.parameter("owner"))))
        if deleteAll {
            var statement = SQLAsync.delete(from: table)
            statement.conditions.append(ownerParameter)
            _ = try await session.run(statement, [[ownerValue]])
            return
        }
        if !removed.isEmpty {
            var statement = SQLAsync.delete(from: table)
            statement.conditions.append(Session.keyCondition(
                table, [ownerColumn, targetColumn], [SQLNode(.parameter("owner")), SQLNode(.parameter("target"))]))
            _ = try await session.run(statement, removed.map { [ownerValue, $0()] })
        }
        if !added.isEmpty {
            let statement = SQLAsync.insert(into: table).values(
                Assignment(column: ownerColumn, node: SQLNode(.parameter("owner"))),
                Assignment(column: targetColumn, node: SQLNode(.parameter("target"))))
            let sets = added.map { [ownerValue, $0()] }
            if sets.contains(where: { $0.contains(.null) }) {
                throw SQLError(.misuse, "a \(table.name) association row would have a NULL key: is its object saved (in the session)?")
            }
            _ = try await session.run(statement, sets)
        }
    }
}

extension Session {
    /// `keys` in slices of at most `inListLimit`.
    func chunks(of keys: [SQLValue]) -> [ArraySlice<SQLValue>] {
        let limit = max(1, inListLimit)
        return stride(from: 0, to: keys.count, by: limit).map { keys[$0..<min($0 + limit, keys.count)] }
    }

    /// The `M` objects whose `column` is one of `keys` (no query for none; one query per `inListLimit` keys).
    func fetch<M: Model>(
        _ type: M.Type, where column: SQLNode, in keys: [SQLValue], isolation: isolated (any Actor)? = #isolation
    ) async throws -> [M] {
        var objects: [M] = []
        for chunk in chunks(of: keys) {
            var query = select(all: M.Schema.self)
            query.conditions.append(SQLNode(.inList(column, chunk.map { SQLNode(.value($0)) }, negated: false)))
            objects += try await fetch(query, as: M.self)
        }
        return objects
    }

    /// The `M` objects whose column `name` (`node` in SQL) holds one of `keys`, by that value. Those the
    /// identity map holds cost no query — when the column is M's primary key, which the map is keyed by —
    /// and the rest are fetched, ``inListLimit`` keys per query. NULL keys are skipped.
    func objects<M: Model>(
        _ type: M.Type, column name: String, _ node: SQLNode, in keys: some Sequence<SQLValue>,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> [SQLValue: M] {
        var byKey: [SQLValue: M] = [:]
        var missing: [SQLValue] = []
        let byPrimaryKey = info(M.self).table.primaryKey == [name]
        for key in Set(keys) where key != .null {
            if byPrimaryKey, let object = tracked(M.self, key: [key]) { byKey[key] = object } else { missing.append(key) }
        }
        for object in try await fetch(M.self, where: node, in: missing) { byKey[object.encoded()[name] ?? .null] = object }
        return byKey
    }

    /// Whether a load may replace the value of a relationship: not when it is loaded and ``autoflush`` is off,
    /// since it may hold changes not flushed yet (with autoflush on, they were flushed before the load).
    func mayReplace<Value>(_ related: Related<Value>) -> Bool { autoflush || !related.isLoaded }

    /// Loads `relationship` of `owner` (one query, or none when a many-to-one parent is already loaded) and
    /// returns it; the owner's property holds it from then on. Flushes first when ``autoflush`` is on.
    @discardableResult
    public func load<M: Model, Value>(
        _ relationship: ToMany<M, Value, some SQLColumnValue>, of owner: M, isolation: isolated (any Actor)? = #isolation
    ) async throws -> [Value] {
        if autoflush { try await flush() }
        try await relationship.load([owner], in: self)
        return owner[keyPath: relationship.property].value ?? []
    }

    /// Loads a many-to-many relationship of `owner` (two queries at most) and returns it.
    @discardableResult
    public func load<M: Model, Target>(
        _ relationship: ManyToMany<M, Target, some SQLColumnValue, some SQLColumnValue>, of owner: M,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> [Target] {
        if autoflush { try await flush() }
        try await relationship.load([owner], in: self)
        return owner[keyPath: relationship.property].value ?? []
    }

    /// Loads a many-to-one relationship of `owner` (no query when the parent is already in the session).
    @discardableResult
    public func load<M: Model, Parent>(
        _ relationship: ToOne<M, Parent, some SQLColumnValue>, of owner: M, isolation: isolated (any Actor)? = #isolation
    ) async throws -> Parent? {
        if autoflush { try await flush() }
        try await relationship.load([owner], in: self)
        return owner[keyPath: relationship.property].value ?? nil
    }

    /// The objects a query returns, with `relationships` loaded eagerly: one more query per relationship
    /// for all of them (`selectin`), never one per object.
    public func objects<M: Model>(
        _ query: Select, as type: M.Type, including relationships: [any Relationship<M>],
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> [M] {
        let owners = try await objects(query, as: type)
        for relationship in relationships { try await relationship.load(owners, in: self, isolation: isolation) }
        return owners
    }
}
