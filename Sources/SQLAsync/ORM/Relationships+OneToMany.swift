// One-to-many relationships from either end: a parent's children (ToMany) and a child's parent (ToOne).

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
        // Every flush asks (autoflush: before every query): the owner is encoded only when something went.
        let gone = removed(owner, in: session)
        guard !gone.isEmpty else { return }
        let ownerKey = owner.encoded()[parentKey.name] ?? .null
        for object in gone {
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
        let byKey = try await session.objects(Parent.self, column: parentKey.name, parentKey.node, in: keys)
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
