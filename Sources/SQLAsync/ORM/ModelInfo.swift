/// What a session knows of a model type, made once per type and shared by its tracked objects.
final class ModelInfo {
    let type: Any.Type
    /// `M.Schema.table` (building it per object would cost more than the rest of the bookkeeping).
    let table: Table
    let operations: any ModelOperations
    let versionColumn: String?
    let hasRelationships: Bool
    let cascadesDeletes: Bool

    init<M: Model>(_ type: M.Type) {
        self.type = M.self
        table = M.Schema.table
        let operations = Operations<M>()
        self.operations = operations
        versionColumn = M.versionColumn?.name
        hasRelationships = operations.hasRelationships
        cascadesDeletes = operations.cascadesDeletes
    }
}

/// A model type's operations on a tracked object, without a closure (and its allocation) per object.
protocol ModelOperations {
    var versionColumn: String? { get }
    var hasRelationships: Bool { get }
    var cascadesDeletes: Bool { get }
    func encode(_ object: AnyObject) -> ColumnValues
    func encode(_ object: AnyObject, into values: inout ColumnValues)
    func update(_ object: AnyObject, _ row: Row) throws
    /// The snapshot in the model's own encoding: decoded into a new object and encoded again.
    func recode(_ snapshot: Row) -> ColumnValues?
    func cascadeSave(_ object: AnyObject, _ session: Session)
    func handleRemoved(_ object: AnyObject, _ session: Session) throws
    func cascadeDelete(_ objects: [AnyObject], _ session: Session, isolation: isolated (any Actor)?) async throws
    /// Sets foreign keys from the object's relationships: those that changed since their load or the last
    /// flush (`changed`), or the others.
    func synchronize(_ object: AnyObject, _ session: Session, changed: Bool) throws
    func linkChanges(_ object: AnyObject, deleted: Bool, persistent: Bool, _ session: Session) throws -> [LinkChange]
    func heldObjects(_ object: AnyObject) -> [AnyObject]
    func record(_ object: AnyObject, _ session: Session)
    /// The objects held through relationships whose rows go in before the object's (`before`: its parents)
    /// and after it (`after`: its children).
    func insertNeighbours(_ object: AnyObject) -> (before: [AnyObject], after: [AnyObject])
}

struct Operations<M: Model>: ModelOperations {
    /// `M.relationships`, built once per session and model (not per object at every flush).
    let relationships: [any RelationshipInternals<M>] = M.relationships.compactMap { $0 as? any RelationshipInternals<M> }
    var versionColumn: String? { M.versionColumn?.name }
    var hasRelationships: Bool { !relationships.isEmpty }
    var cascadesDeletes: Bool { relationships.contains { $0.cascade.contains(.delete) } }

    // `unsafeDowncast`: an entry is created only with an `M` and its `Operations<M>` together.
    func encode(_ object: AnyObject) -> ColumnValues { unsafeDowncast(object, to: M.self).encoded() }
    func encode(_ object: AnyObject, into values: inout ColumnValues) { unsafeDowncast(object, to: M.self).encode(to: &values) }
    func update(_ object: AnyObject, _ row: Row) throws { try unsafeDowncast(object, to: M.self).update(from: row) }
    func recode(_ snapshot: Row) -> ColumnValues? { (try? M(row: snapshot))?.encoded() }

    func cascadeSave(_ object: AnyObject, _ session: Session) {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships where relationship.cascade.contains(.saveUpdate) {
            relationship.cascadeSave(owner, in: session)
        }
    }

    func handleRemoved(_ object: AnyObject, _ session: Session) throws {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships { try relationship.handleRemoved(owner, in: session) }
    }

    func cascadeDelete(_ objects: [AnyObject], _ session: Session, isolation: isolated (any Actor)?) async throws {
        let owners = objects.map { unsafeDowncast($0, to: M.self) }
        for relationship in relationships where relationship.cascade.contains(.delete) {
            try await relationship.cascadeDelete(owners, in: session, isolation: isolation)
        }
    }

    func synchronize(_ object: AnyObject, _ session: Session, changed: Bool) throws {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships where relationship.hasChanged(owner, in: session) == changed {
            try relationship.synchronize(owner, in: session)
        }
    }

    func linkChanges(_ object: AnyObject, deleted: Bool, persistent: Bool, _ session: Session) throws -> [LinkChange] {
        let owner = unsafeDowncast(object, to: M.self)
        var changes: [LinkChange] = []
        for relationship in relationships {
            changes += try relationship.linkChanges(owner, deleted: deleted, persistent: persistent, in: session)
        }
        return changes
    }

    func heldObjects(_ object: AnyObject) -> [AnyObject] {
        let owner = unsafeDowncast(object, to: M.self)
        return relationships.flatMap { $0.loadedObjects(owner) ?? [] }
    }

    func insertNeighbours(_ object: AnyObject) -> (before: [AnyObject], after: [AnyObject]) {
        let owner = unsafeDowncast(object, to: M.self)
        var before: [AnyObject] = [], after: [AnyObject] = []
        for relationship in relationships {
            switch relationship.insertOrder {
            case .ownerFirst: after += relationship.loadedObjects(owner) ?? []
            case .relatedFirst: before += relationship.loadedObjects(owner) ?? []
            case .none: break
            }
        }
        return (before, after)
    }

    func record(_ object: AnyObject, _ session: Session) {
        let owner = unsafeDowncast(object, to: M.self)
        for relationship in relationships {
            if let related = relationship.loadedObjects(owner) { session.record(owner, relationship.propertyKey, related) }
        }
    }
}

extension Model {
    func encoded() -> ColumnValues {
        var values = ColumnValues(capacity: Schema.columns.count)
        encode(to: &values)
        return values
    }
}

extension Engine {
    /// A session on a pooled connection: committed when `body` returns, rolled back when it throws or is
    /// cancelled; the connection goes back to the pool either way.
    ///
    /// A `readOnly` session runs its queries in a read-only transaction, on a standby when the engine routes
    /// reads (``ReadRouting``); a flush that would write fails with the database's error.
    @discardableResult
    public func withSession<T>(
        readOnly: Bool = false, isolation: isolated (any Actor)? = #isolation, _ body: (Session) async throws -> T
    ) async throws -> T {
        if readOnly {
            return try await withReadConnection(after: nil) { connection in try await Self.runSession(connection, readOnly: true, body) }
        }
        return try await withConnection { connection in try await Self.runSession(connection, readOnly: false, body) }
    }

    private static func runSession<T>(
        _ connection: Connection, readOnly: Bool, isolation: isolated (any Actor)? = #isolation, _ body: (Session) async throws -> T
    ) async throws -> T {
        let session = Session(connection: connection, readOnly: readOnly)
        do {
            let result = try await body(session)
            try await session.commit()
            return result
        } catch {
            await session.rollback()
            throw error
        }
    }
}
