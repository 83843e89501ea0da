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
