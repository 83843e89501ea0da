/// The value of a relationship: loaded, or not. Reading it never runs a query — an unloaded relationship is a
/// state the compiler makes you handle, and loading is an explicit `await` (`Session.load(_:of:)`)
/// or eager loading chosen per query.
///
/// ```swift
/// switch author.books {
/// case .loaded(let books): print(books.count)
/// case .notLoaded: let books = try await session.load(Author.books, of: author)
/// }
/// ```
public enum Related<Value> {
    case notLoaded
    case loaded(Value)

    /// The value when loaded, else `nil`.
    public var value: Value? {
        if case .loaded(let value) = self { value } else { nil }
    }

    /// Whether the value is loaded.
    public var isLoaded: Bool { value != nil }
}

/// A column's name and its qualified expression, whatever its value type.
struct ColumnReference: Sendable {
    let name: String
    let node: SQLNode
    init<Value>(_ column: Column<Value>) {
        name = column.name
        node = column.node
    }
}

/// What a session does to the objects of a relationship when it writes the owner.
public struct Cascade: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }

    /// Objects the relationship holds are added to the session with their owner (the default).
    public static let saveUpdate = Cascade(rawValue: 1)
    /// Deleting the owner deletes its children (loaded first when they are not).
    public static let delete = Cascade(rawValue: 2)
    /// A child removed from its parent's collection is deleted (without it, its foreign key is set to NULL).
    public static let deleteOrphan = Cascade(rawValue: 4)
    /// `delete` and `deleteOrphan` with `saveUpdate`: the children live and die with their parent.
    public static let all: Cascade = [.saveUpdate, .delete, .deleteOrphan]
}

/// One side of a relationship between two models: the parent's children (``ToMany``), the child's parent
/// (``ToOne``), or targets through an association table (``ManyToMany``).
public protocol Relationship<Owner>: Sendable {
    associatedtype Owner: Model
    /// Loads the relationship of every owner in `owners` with one query (selectin-style eager loading),
    /// without flushing first.
    func load(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)?) async throws
}

/// What the session needs of a relationship at flush.
protocol RelationshipInternals<Owner>: Relationship {
    var propertyKey: AnyKeyPath { get }
    var cascade: Cascade { get }
    /// The objects the owner's property holds, or nil when it is not loaded.
    func loadedObjects(_ owner: Owner) -> [AnyObject]?
    /// Adds what the owner holds and the session does not track.
    func cascadeSave(_ owner: Owner, in session: Session)
    /// Objects removed from the owner's property since its load or the last flush.
    func handleRemoved(_ owner: Owner, in session: Session) throws
    /// Marks the deleted owners' children deleted, loading them first when needed.
    func cascadeDelete(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)?) async throws
    /// Sets foreign keys from what the owner holds.
    func synchronize(_ owner: Owner, in session: Session) throws
    /// Association rows to write (many-to-many).
    func linkChanges(_ owner: Owner, deleted: Bool, persistent: Bool, in session: Session) throws -> [LinkChange]
    /// Which row a new owner and the new objects it holds need inserted first (for rows of one table that
    /// reference each other: a tree).
    var insertOrder: InsertOrder { get }
}

/// Which of two related new rows is inserted first: the one whose key the other's foreign key takes.
enum InsertOrder {
    /// The owner (a one-to-many's parent).
    case ownerFirst
    /// The objects the owner holds (a many-to-one's parent).
    case relatedFirst
    /// No order (many-to-many: association rows are written after every insert).
    case none
}

extension RelationshipInternals {
    func linkChanges(_ owner: Owner, deleted: Bool, persistent: Bool, in session: Session) throws -> [LinkChange] { [] }
    func cascadeDelete(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)?) async throws {}

    /// Whether the owner's property holds other objects than at its load or the last flush (true for one
    /// never recorded: set on a new object).
    func hasChanged(_ owner: Owner, in session: Session) -> Bool {
        guard let now = loadedObjects(owner) else { return false }
        guard let before = session.recorded(owner, propertyKey) else { return true }
        return Set(now.map(ObjectIdentifier.init)) != Set(before.map(ObjectIdentifier.init))
    }

    /// The objects removed since the load or the last flush.
    func removed(_ owner: Owner, in session: Session) -> [AnyObject] {
        guard let before = session.recorded(owner, propertyKey), let now = loadedObjects(owner) else { return [] }
        let kept = Set(now.map(ObjectIdentifier.init))
        return before.filter { !kept.contains(ObjectIdentifier($0)) }
    }
}

/// A parent's children: `Author.books`, through the child table's foreign key.
///
/// ```swift
/// extension Author {
///     static let books = ToMany(\Author.books, key: Authors.id, children: Books.authorID, cascade: .all)
///     static var relationships: [any Relationship<Author>] { [books] }
/// }
/// ```
///
/// At flush (when listed in the parent's ``Model/relationships``): children the parent holds are added
/// (``Cascade/saveUpdate``) and get the parent's key in their foreign key — generated keys included, since
/// parents are inserted first; a child removed from the collection is deleted (``Cascade/deleteOrphan``) or
/// its foreign key set to NULL; deleting the parent deletes the children (``Cascade/delete``).
public struct ToMany<Parent: Model, Child: Model, Key: SQLColumnValue>: Relationship, RelationshipInternals {
    let property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable
    let parentKey: ColumnReference
    let childKey: ColumnReference
    public let cascade: Cascade

    /// - Parameters:
    ///   - property: the parent's property that holds the children.
    ///   - key: the parent's column the children reference (its primary key, usually).
    ///   - children: the child table's foreign key column.
    ///   - cascade: what writing the parent does to the children (default: ``Cascade/saveUpdate``).
    public init(
        _ property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable, key: Column<Key>, children: Column<Key>,
        cascade: Cascade = .saveUpdate
    ) {
        self.init(property, ColumnReference(key), ColumnReference(children), cascade)
    }

    /// The same, with a nullable foreign key (a child may have no parent).
    public init(
        _ property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable, key: Column<Key>, children: Column<Key?>,
        cascade: Cascade = .saveUpdate
    ) {
        self.init(property, ColumnReference(key), ColumnReference(children), cascade)
    }

    private init(
        _ property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable, _ parentKey: ColumnReference,
        _ childKey: ColumnReference, _ cascade: Cascade
    ) {
        self.property = property
        self.parentKey = parentKey
        self.childKey = childKey
        self.cascade = cascade
    }

    var propertyKey: AnyKeyPath { property }
    var insertOrder: InsertOrder { .ownerFirst }

    public func load(_ owners: [Parent], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let keys = owners.map { $0.encoded()[parentKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var byKey: [SQLValue: [Child]] = [:]
        for child in try await session.fetch(Child.self, where: childKey.node, in: wanted) {
            byKey[child.encoded()[childKey.name] ?? .null, default: []].append(child)
        }
        for (owner, key) in zip(owners, keys) { set(byKey[key] ?? [], on: owner, in: session) }
    }

    func set(_ children: [Child], on owner: Parent, in session: Session) {
        guard session.mayReplace(owner[keyPath: property]) else { return }
        owner[keyPath: property] = .loaded(children)
        session.record(owner, property, children)
    }

    func loadedObjects(_ owner: Parent) -> [AnyObject]? { owner[keyPath: property].value }

    func cascadeSave(_ owner: Parent, in session: Session) {
        for child in owner[keyPath: property].value ?? [] { session.track(child) }
    }

    func handleRemoved(_ owner: Parent, in session: Session) throws {
        let ownerKey = owner.encoded()[parentKey.name] ?? .null
        for object in removed(owner, in: session) {
            guard let child = object as? Child, session.isLive(child),
                !session.held.contains(ObjectIdentifier(child))  // moved to another parent, not orphaned
            else { continue }
            if cascade.contains(.deleteOrphan) {
                session.markDeleted(child)
            } else if child.encoded()[childKey.name] == ownerKey {
                // Still pointing at this parent (not moved to another): it has none now.
                try session.set(childKey.name, of: child, to: .null)
            }
        }
    }

    func cascadeDelete(_ owners: [Parent], in session: Session, isolation: isolated (any Actor)?) async throws {
        let unloaded = owners.filter { !$0[keyPath: property].isLoaded }
        if !unloaded.isEmpty { try await load(unloaded, in: session) }
        for owner in owners {
            for child in owner[keyPath: property].value ?? [] {
                session.markDeleted(child)
            }
        }
    }

    func synchronize(_ owner: Parent, in session: Session) throws {
        guard let children = owner[keyPath: property].value, !children.isEmpty else { return }
        let key = owner.encoded()[parentKey.name] ?? .null
        guard key != .null else { return }  // not inserted yet: the children follow it
        for child in children { try session.set(childKey.name, of: child, to: key) }
    }
}

/// A child's parent: `Book.author`, through the child's foreign key column.
///
/// ```swift
/// extension Book {
///     static let author = ToOne(\Book.author, key: Books.authorID, parent: Authors.id)
/// }
/// ```
///
/// At flush (when listed in the child's ``Model/relationships``): a parent the child holds is added
/// (``Cascade/saveUpdate``) and its key written to the child's foreign key; a parent set to `.loaded(nil)`
/// sets the foreign key to NULL.
public struct ToOne<Child: Model, Parent: Model, Key: SQLColumnValue>: Relationship, RelationshipInternals {
    let property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable
    let childKey: ColumnReference
    let parentKey: ColumnReference
    public let cascade: Cascade

    /// - Parameters:
    ///   - property: the child's property that holds the parent.
    ///   - key: the child's foreign key column.
    ///   - parent: the parent's column it references.
    ///   - cascade: ``Cascade/saveUpdate`` (the default) adds a new parent with the child.
    public init(
        _ property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable, key: Column<Key>, parent: Column<Key>,
        cascade: Cascade = .saveUpdate
    ) {
        self.init(property, ColumnReference(key), ColumnReference(parent), cascade)
    }

    /// The same, with a nullable foreign key (the child may have no parent).
    public init(
        _ property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable, key: Column<Key?>, parent: Column<Key>,
        cascade: Cascade = .saveUpdate
    ) {
        self.init(property, ColumnReference(key), ColumnReference(parent), cascade)
    }

    private init(
        _ property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable, _ childKey: ColumnReference,
        _ parentKey: ColumnReference, _ cascade: Cascade
    ) {
        self.property = property
        self.childKey = childKey
        self.parentKey = parentKey
        self.cascade = cascade
    }

    var propertyKey: AnyKeyPath { property }
    var insertOrder: InsertOrder { .relatedFirst }

    public func load(_ owners: [Child], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let keys = owners.map { $0.encoded()[childKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var byKey: [SQLValue: Parent] = [:]
        // Parents already in the identity map cost no query.
        var missing: [SQLValue] = []
        // (Only when the column referenced is the parent's primary key: the identity map is by primary key.)
        let byPrimaryKey = Parent.Schema.table.primaryKey == [parentKey.name]
        for key in wanted {
            if byPrimaryKey, let parent = session.tracked(Parent.self, key: [key]) { byKey[key] = parent } else { missing.append(key) }
        }
        for parent in try await session.fetch(Parent.self, where: parentKey.node, in: missing) {
            byKey[parent.encoded()[parentKey.name] ?? .null] = parent
        }
        for (owner, key) in zip(owners, keys) { set(byKey[key], on: owner, in: session) }
    }

    func set(_ parent: Parent?, on owner: Child, in session: Session) {
        guard session.mayReplace(owner[keyPath: property]) else { return }
        owner[keyPath: property] = .loaded(parent)
        session.record(owner, property, parent.map { [$0] } ?? [])
    }

    func loadedObjects(_ owner: Child) -> [AnyObject]? {
        guard case .loaded(let parent) = owner[keyPath: property] else { return nil }
        return parent.map { [$0] } ?? []
    }

    func cascadeSave(_ owner: Child, in session: Session) {
        if case .loaded(let parent?) = owner[keyPath: property] { session.track(parent) }
    }

    func handleRemoved(_ owner: Child, in session: Session) throws {
        // A parent replaced by nil: the child has none.
        if case .loaded(nil) = owner[keyPath: property], !removed(owner, in: session).isEmpty {
            try session.set(childKey.name, of: owner, to: .null)
        }
    }

    func synchronize(_ owner: Child, in session: Session) throws {
        guard case .loaded(let parent?) = owner[keyPath: property] else { return }
        let key = parent.encoded()[parentKey.name] ?? .null
        guard key != .null else { return }
        try session.set(childKey.name, of: owner, to: key)
    }
}

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
            var missing: [SQLValue] = []
            let byPrimaryKey = Target.Schema.table.primaryKey == [targetKey.name]
            for key in Set(links.values.joined()) {
                if byPrimaryKey, let target = session.tracked(Target.self, key: [key]) { targetsByKey[key] = target } else { missing.append(key) }
            }
            for target in try await session.fetch(Target.self, where: targetKey.node, in: missing) {
                targetsByKey[target.encoded()[targetKey.name] ?? .null] = target
            }
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
