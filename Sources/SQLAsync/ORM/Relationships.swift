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

/// One side of a relationship between two models, through a foreign key column of the child's table: the
/// parent's children (one-to-many), or the child's parent (many-to-one).
public protocol Relationship<Owner>: Sendable {
    associatedtype Owner: Model
    /// Loads the relationship of every owner in `owners` with one query (selectin-style eager loading).
    func load(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)?) async throws
}

/// A parent's children: `Author.books`, through the child table's foreign key.
///
/// ```swift
/// extension Author {
///     static let books = ToMany(\Author.books, key: Authors.id, children: Books.authorID)
/// }
/// ```
public struct ToMany<Parent: Model, Child: Model, Key: SQLColumnValue>: Relationship {
    let property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable
    let parentKey: Column<Key>
    let childKey: Column<Key>

    /// - Parameters:
    ///   - property: the parent's property that holds the children.
    ///   - key: the parent's column the children reference (its primary key, usually).
    ///   - children: the child table's foreign key column.
    public init(_ property: any ReferenceWritableKeyPath<Parent, Related<[Child]>> & Sendable, key: Column<Key>, children: Column<Key>) {
        self.property = property
        parentKey = key
        childKey = children
    }

    public func load(_ owners: [Parent], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let keys = owners.map { $0.encoded()[parentKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var byKey: [SQLValue: [Child]] = [:]
        if !wanted.isEmpty {
            var query = select(all: Child.Schema.self)
            query.conditions.append(SQLNode(.inList(childKey.node, wanted.map { SQLNode(.value($0)) }, negated: false)))
            for child in try await session.objects(query, as: Child.self) {
                byKey[child.encoded()[childKey.name] ?? .null, default: []].append(child)
            }
        }
        for (owner, key) in zip(owners, keys) { owner[keyPath: property] = .loaded(byKey[key] ?? []) }
    }
}

/// A child's parent: `Book.author`, through the child's foreign key column.
///
/// ```swift
/// extension Book {
///     static let author = ToOne(\Book.author, key: Books.authorID, parent: Authors.id)
/// }
/// ```
public struct ToOne<Child: Model, Parent: Model, Key: SQLColumnValue>: Relationship {
    let property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable
    let childKey: Column<Key>
    let parentKey: Column<Key>

    /// - Parameters:
    ///   - property: the child's property that holds the parent.
    ///   - key: the child's foreign key column.
    ///   - parent: the parent's column it references.
    public init(_ property: any ReferenceWritableKeyPath<Child, Related<Parent?>> & Sendable, key: Column<Key>, parent: Column<Key>) {
        self.property = property
        childKey = key
        parentKey = parent
    }

    public func load(_ owners: [Child], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        let keys = owners.map { $0.encoded()[childKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var byKey: [SQLValue: Parent] = [:]
        // Parents already in the identity map cost no query.
        var missing: [SQLValue] = []
        for key in wanted {
            if let parent = session.tracked(Parent.self, key: [key]) { byKey[key] = parent } else { missing.append(key) }
        }
        if !missing.isEmpty {
            var query = select(all: Parent.Schema.self)
            query.conditions.append(SQLNode(.inList(parentKey.node, missing.map { SQLNode(.value($0)) }, negated: false)))
            for parent in try await session.objects(query, as: Parent.self) {
                byKey[parent.encoded()[parentKey.name] ?? .null] = parent
            }
        }
        for (owner, key) in zip(owners, keys) { owner[keyPath: property] = .loaded(byKey[key]) }
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
/// the session.
public struct ManyToMany<Owner: Model, Target: Model, OwnerKey: SQLColumnValue, TargetKey: SQLColumnValue>: Relationship {
    let property: any ReferenceWritableKeyPath<Owner, Related<[Target]>> & Sendable
    let ownerKey: Column<OwnerKey>
    let ownerLink: Column<OwnerKey>
    let targetLink: Column<TargetKey>
    let targetKey: Column<TargetKey>

    /// - Parameters:
    ///   - property: the owner's property that holds the targets.
    ///   - key: the owner's column the association table references.
    ///   - ownerLink: the association table's column referencing the owner.
    ///   - targetLink: the association table's column referencing the target.
    ///   - target: the target's column `targetLink` references.
    public init(
        _ property: any ReferenceWritableKeyPath<Owner, Related<[Target]>> & Sendable, key: Column<OwnerKey>,
        through ownerLink: Column<OwnerKey>, _ targetLink: Column<TargetKey>, to target: Column<TargetKey>
    ) {
        self.property = property
        ownerKey = key
        self.ownerLink = ownerLink
        self.targetLink = targetLink
        targetKey = target
    }

    public func load(_ owners: [Owner], in session: Session, isolation: isolated (any Actor)? = #isolation) async throws {
        if session.autoflush { try await session.flush() }
        let keys = owners.map { $0.encoded()[ownerKey.name] ?? .null }
        let wanted = Array(Set(keys.filter { $0 != .null }))
        var links: [SQLValue: [SQLValue]] = [:]
        var targetsByKey: [SQLValue: Target] = [:]
        if !wanted.isEmpty {
            var query = select(ownerLink, targetLink)
            query.tables = [Table(ownerLink.qualifier, columns: [])]
            query.conditions.append(SQLNode(.inList(ownerLink.node, wanted.map { SQLNode(.value($0)) }, negated: false)))
            for row in try await session.connection.execute(query) {
                links[row[0] ?? .null, default: []].append(row[1] ?? .null)
            }
            var missing: [SQLValue] = []
            for key in Set(links.values.joined()) {
                if let target = session.tracked(Target.self, key: [key]) { targetsByKey[key] = target } else { missing.append(key) }
            }
            if !missing.isEmpty {
                var targets = select(all: Target.Schema.self)
                targets.conditions.append(SQLNode(.inList(targetKey.node, missing.map { SQLNode(.value($0)) }, negated: false)))
                for target in try await session.objects(targets, as: Target.self) {
                    targetsByKey[target.encoded()[targetKey.name] ?? .null] = target
                }
            }
        }
        for (owner, key) in zip(owners, keys) {
            owner[keyPath: property] = .loaded((links[key] ?? []).compactMap { targetsByKey[$0] })
        }
    }
}

extension Session {
    /// Loads `relationship` of `owner` (one query, or none when a many-to-one parent is already loaded) and
    /// returns it; the owner's property holds it from then on.
    @discardableResult
    public func load<M: Model, Value>(
        _ relationship: ToMany<M, Value, some SQLColumnValue>, of owner: M, isolation: isolated (any Actor)? = #isolation
    ) async throws -> [Value] {
        try await relationship.load([owner], in: self)
        return owner[keyPath: relationship.property].value ?? []
    }

    /// Loads a many-to-many relationship of `owner` (two queries at most) and returns it.
    @discardableResult
    public func load<M: Model, Target>(
        _ relationship: ManyToMany<M, Target, some SQLColumnValue, some SQLColumnValue>, of owner: M,
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> [Target] {
        try await relationship.load([owner], in: self)
        return owner[keyPath: relationship.property].value ?? []
    }

    /// Loads a many-to-one relationship of `owner` (no query when the parent is already in the session).
    @discardableResult
    public func load<M: Model, Parent>(
        _ relationship: ToOne<M, Parent, some SQLColumnValue>, of owner: M, isolation: isolated (any Actor)? = #isolation
    ) async throws -> Parent? {
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
