import Logging
import Runtime
import SQLAsync
import TestSupport
import Testing

// A library whose relationships the session writes: an author's books live and die with it (cascade all),
// a book knows its author (save-update), a post's tags are written as association rows.

enum Shelves: TableSchema {
    static let tableName = "shelves"
    static let id = Column<Int64>("id", of: Shelves.self, .primaryKey, .autoIncrement)
    static let name = Column<String>("name", of: Shelves.self, .unique)
    static let columns: [any AnyColumn] = [id, name]
}

enum Volumes: TableSchema {
    static let tableName = "volumes"
    static let id = Column<Int64>("id", of: Volumes.self, .primaryKey, .autoIncrement)
    static let shelfID = Column<Int64?>("shelf_id", of: Volumes.self, .references(Shelves.id))
    static let title = Column<String>("title", of: Volumes.self)
    static let columns: [any AnyColumn] = [id, shelfID, title]
}

enum Notes: TableSchema {
    static let tableName = "notes"
    static let id = Column<Int64>("id", of: Notes.self, .primaryKey, .autoIncrement)
    static let volumeID = Column<Int64>("volume_id", of: Notes.self, .references(Volumes.id))
    static let text = Column<String>("text", of: Notes.self)
    static let columns: [any AnyColumn] = [id, volumeID, text]
}

/// Shelves own their volumes loosely: a volume taken off a shelf stays, with no shelf.
final class Shelf: Model {
    typealias Schema = Shelves
    var id: Int64?
    var name: String
    var volumes: Related<[Volume]> = .notLoaded
    static let volumes = ToMany(\Shelf.volumes, key: Shelves.id, children: Volumes.shelfID)
    static var relationships: [any Relationship<Shelf>] { [volumes] }

    init(name: String, volumes: [Volume]? = nil) {
        self.name = name
        if let volumes { self.volumes = .loaded(volumes) }
    }
    convenience init(row: Row) throws {
        self.init(name: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Shelves.id.name)
        name = try row.decode(Shelves.name.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Shelves.id] = id
        values[Shelves.name] = name
    }
}

/// A volume's notes live and die with it.
final class Volume: Model {
    typealias Schema = Volumes
    var id: Int64?
    var shelfID: Int64?
    var title: String
    var shelf: Related<Shelf?> = .notLoaded
    var notes: Related<[Note]> = .notLoaded
    static let shelf = ToOne(\Volume.shelf, key: Volumes.shelfID, parent: Shelves.id)
    static let notes = ToMany(\Volume.notes, key: Volumes.id, children: Notes.volumeID, cascade: .all)
    static var relationships: [any Relationship<Volume>] { [shelf, notes] }

    init(title: String, notes: [Note]? = nil) {
        self.title = title
        if let notes { self.notes = .loaded(notes) }
    }
    convenience init(row: Row) throws {
        self.init(title: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Volumes.id.name)
        shelfID = try row.decode(Volumes.shelfID.name)
        title = try row.decode(Volumes.title.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Volumes.id] = id
        values[Volumes.shelfID] = shelfID
        values[Volumes.title] = title
    }
}

final class Note: Model {
    typealias Schema = Notes
    var id: Int64?
    var volumeID: Int64 = 0  // set by the session from the volume that holds the note
    var text: String

    init(_ text: String) { self.text = text }
    convenience init(row: Row) throws {
        self.init("")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Notes.id.name)
        volumeID = try row.decode(Notes.volumeID.name)
        text = try row.decode(Notes.text.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Notes.id] = id
        values[Notes.volumeID] = volumeID
        values[Notes.text] = text
    }
}

/// Posts write their tags' association rows.
final class TaggedPost: Model {
    typealias Schema = Posts
    var id: Int64?
    var title: String
    var tags: Related<[Tag]> = .notLoaded
    static let tags = ManyToMany(\TaggedPost.tags, key: Posts.id, through: PostTags.postID, PostTags.tagID, to: Tags.id)
    static var relationships: [any Relationship<TaggedPost>] { [tags] }

    init(title: String, tags: [Tag]? = nil) {
        self.title = title
        if let tags { self.tags = .loaded(tags) }
    }
    convenience init(row: Row) throws {
        self.init(title: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Posts.id.name)
        title = try row.decode(Posts.title.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Posts.id] = id
        values[Posts.title] = title
    }
}

@Suite("ORM cascades, model queries, refresh and merge", .limit(minutes: 1))
struct SessionCascadeTests {
    static let library = Metadata(Shelves.self, Volumes.self, Notes.self)

    static func rows<S: TableSchema>(_ schema: S.Type, _ connection: Connection) async throws -> Int {
        try await connection.execute(select(count()).from(schema)).scalar(Int.self) ?? -1
    }

    @Test("the seed scenario: a graph added through its relationships, queried back eagerly, changed, deleted with its orphans",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func seedScenario(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func selects() -> Int { logs.all.filter { $0.contains("execute") && $0.contains("SELECT") }.count }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.library.createAll(on: connection)

            // One add: the shelf, its volumes and their notes are saved, parents first, with their new keys
            // in the children's foreign keys.
            let notes = Note("first")
            let history = Volume(title: "History", notes: [notes, Note("second")])
            let poetry = Volume(title: "Poetry")
            let shelf = Shelf(name: "A", volumes: [history, poetry])
            let session = Session(connection: connection)
            session.add(shelf)
            try await session.commit()
            let shelfID = try #require(shelf.id)
            #expect(history.shelfID == shelfID && poetry.shelfID == shelfID)
            #expect(notes.volumeID == history.id)
            #expect(try await Self.rows(Notes.self, connection) == 2)

            // Queried back: a many-to-one joined into the same query, a one-to-many in one more.
            let reader = Session(connection: connection)
            let before = selects()
            let volumes = try await reader.scalars(
                select(Volume.self).orderBy(Volumes.title.asc()).joined(Volume.shelf).including(Volume.notes))
            #expect(selects() - before == 2, "two queries expected, \(selects() - before) ran")
            #expect(volumes.map(\.title) == ["History", "Poetry"])
            let readShelf = try #require(volumes[0].shelf.value ?? nil)
            #expect(readShelf.name == "A" && volumes[1].shelf.value.flatMap { $0 } === readShelf, "one object per key")
            #expect(volumes[0].notes.value?.map(\.text).sorted() == ["first", "second"])
            #expect(volumes[1].notes.value?.isEmpty == true)
            // A one-to-many joined: the parent's rows repeat, the parent does not.
            let shelves = try await reader.scalars(select(Shelf.self).joined(Shelf.volumes))
            #expect(shelves.count == 1 && shelves[0] === readShelf)
            #expect(readShelf.volumes.value?.map(\.title).sorted() == ["History", "Poetry"])
            await #expect { _ = try await reader.scalars(select(Shelf.self).joined(Shelf.volumes).limit(1)) } throws: {
                ($0 as? SQLError)?.kind == .misuse
            }
            try await reader.commit()

            // Orphans: a note taken out of its volume is deleted (delete-orphan); a volume taken off the shelf
            // stays, with no shelf (its foreign key is cleared).
            let writer = Session(connection: connection)
            let history2 = try #require(try await writer.scalar(select(Volume.self).where(Volumes.title == "History").including(Volume.notes)))
            history2.notes = .loaded((history2.notes.value ?? []).filter { $0.text != "first" })
            let shelf2 = try #require(try await writer.get(Shelf.self, shelfID))
            let onShelf = try await writer.load(Shelf.volumes, of: shelf2)
            shelf2.volumes = .loaded(onShelf.filter { $0.title != "Poetry" })
            try await writer.commit()
            #expect(try await connection.execute("SELECT text FROM notes").scalars(String.self) == ["second"])
            #expect(try await connection.execute("SELECT shelf_id FROM volumes WHERE title = 'Poetry'").scalar(Int64?.self) == .some(nil))

            // Deleting a volume deletes its notes, loaded or not (delete cascade).
            let deleter = Session(connection: connection)
            let doomed = try #require(try await deleter.scalar(select(Volume.self).where(Volumes.title == "History")))
            #expect(!doomed.notes.isLoaded)
            try deleter.delete(doomed)
            try await deleter.commit()
            #expect(try await Self.rows(Notes.self, connection) == 0)
            #expect(try await Self.rows(Volumes.self, connection) == 1)
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("many-to-many writes: association rows follow the collection, and go with their owner",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func manyToManyWrites(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            let metadata = Metadata(Posts.self, Tags.self, PostTags.self)
            try await metadata.createAll(on: connection)
            let (swift, sql, db) = (Tag(label: "swift"), Tag(label: "sql"), Tag(label: "db"))
            let post = TaggedPost(title: "Intro", tags: [swift, sql])
            let session = Session(connection: connection)
            session.add(post)  // the new tags come with it
            try await session.commit()
            #expect(try await Self.rows(PostTags.self, connection) == 2)

            post.tags = .loaded([sql, db])  // one removed, one new
            try await session.commit()
            let reader = Session(connection: connection)
            let read = try #require(try await reader.scalar(select(TaggedPost.self).including(TaggedPost.tags)))
            #expect(read.tags.value?.map(\.label).sorted() == ["db", "sql"])
            try await reader.commit()

            // Deleting the post deletes its association rows (whether loaded or not); the tags stay.
            let deleter = Session(connection: connection)
            let doomed = try #require(try await deleter.get(TaggedPost.self, post.id ?? 0))
            try deleter.delete(doomed)
            try await deleter.commit()
            #expect(try await Self.rows(PostTags.self, connection) == 0)
            #expect(try await Self.rows(Tags.self, connection) == 3)
            try await metadata.dropAll(on: connection)
        }
    }

    @Test("refresh discards unsaved changes; merge copies a detached object onto the session's; a row read back unchanged is not updated",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func refreshAndMerge(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            let metadata = Metadata(Posts.self, Tags.self, PostTags.self)
            try await metadata.createAll(on: connection)
            let session = Session(connection: connection)
            let tag = Tag(label: "swift")
            tag.featured = true
            session.add(tag)
            try await session.commit()
            let id = try #require(tag.id)

            // Changed elsewhere, and here: refresh takes the database's values.
            try await connection.execute("UPDATE tags SET label = 'Swift' WHERE id = \(id)")
            tag.label = "local"
            try await session.refresh(tag)
            #expect(tag.label == "Swift")
            try await session.commit()
            #expect(try await connection.execute("SELECT label FROM tags WHERE id = \(id)").scalar(String.self) == "Swift")

            // Merge: an object from outside the session (a request body, say) with a known key.
            let incoming = Tag(label: "Swift 6")
            incoming.id = id
            incoming.featured = true
            let merged = try await session.merge(incoming)
            #expect(merged === tag && tag.label == "Swift 6" && !session.contains(incoming))
            // An unknown key: the object itself is added.
            let fresh = Tag(label: "new")
            #expect(try await session.merge(fresh) === fresh && session.contains(fresh))
            try await session.commit()
            #expect(try await Self.rows(Tags.self, connection) == 2)

            // Loaded and flushed untouched: no UPDATE (a Bool read back from SQLite as an integer is still
            // the same value).
            let reader = Session(connection: connection)
            let tags = try await reader.scalars(select(Tag.self))
            #expect(tags.count == 2)
            let updatesBefore = logs.all.filter { $0.contains("UPDATE") }.count
            try await reader.commit()
            #expect(logs.all.filter { $0.contains("UPDATE") }.count == updatesBefore, "an unchanged object was updated")

            // A row deleted elsewhere: refresh says so.
            let gone = try #require(try await reader.get(Tag.self, id))
            try await connection.execute("DELETE FROM tags WHERE id = \(id)")
            await #expect { try await reader.refresh(gone) } throws: { ($0 as? SQLError)?.kind == .staleData }
            await reader.rollback()
            try await metadata.dropAll(on: connection)
        }
    }

    @Test("a savepoint inside a session: a failure rolls back to it, the transaction and its earlier work go on",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func savepoints(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.library.createAll(on: connection)
            let session = Session(connection: connection)
            session.add(Shelf(name: "kept"))
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await session.withSavepoint { session in
                    session.add(Shelf(name: "dropped"))
                    try await session.flush()
                    throw Abort()
                }
            }
            // A constraint violation inside the savepoint: the same.
            await #expect { try await session.withSavepoint { $0.add(Shelf(name: "kept")) } } throws: {
                ($0 as? SQLError)?.kind == .constraint
            }
            try await session.withSavepoint { $0.add(Shelf(name: "also kept")) }
            try await session.commit()
            #expect(try await connection.execute("SELECT name FROM shelves ORDER BY name").scalars(String.self) == ["also kept", "kept"])
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("updates and deletes are batched; a stale row in a batch fails the whole flush",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func batches(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        /// The statements logged since `start` that contain `text`.
        func sent(_ text: String, since start: Int) -> [String] { logs.all.dropFirst(start).filter { $0.contains(text) } }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.library.createAll(on: connection)
            let session = Session(connection: connection)
            let shelves = (0..<50).map { Shelf(name: "s\($0)") }
            session.addAll(shelves)
            var start = logs.all.count
            try await session.commit()
            // One statement for the 50 inserts, one for the 50 updates, one for the 20 deletes.
            let inserts = sent("INSERT", since: start)
            #expect(inserts.count == 1 && inserts[0].contains("executeMany") && inserts[0].contains("50"), "\(inserts)")
            for shelf in shelves { shelf.name += "!" }
            start = logs.all.count
            try await session.commit()
            let updates = sent("UPDATE", since: start)
            #expect(updates.count == 1 && updates[0].contains("executeMany") && updates[0].contains("50"), "\(updates)")
            #expect(try await connection.execute("SELECT count(*) FROM shelves WHERE name LIKE '%!'").scalar(Int.self) == 50)
            for shelf in shelves.prefix(20) { try session.delete(shelf) }
            start = logs.all.count
            try await session.commit()
            let deletes = sent("DELETE", since: start)
            #expect(deletes.count == 1 && deletes[0].contains("executeMany") && deletes[0].contains("20"), "\(deletes)")
            #expect(try await Self.rows(Shelves.self, connection) == 30)

            // One of the rows being updated is gone: the flush fails as stale and writes nothing.
            try await connection.execute("DELETE FROM shelves WHERE name = 's49!'")
            for shelf in shelves.suffix(30) { shelf.name += "?" }
            await #expect { try await session.commit() } throws: { ($0 as? SQLError)?.kind == .staleData }
            #expect(try await connection.execute("SELECT count(*) FROM shelves WHERE name LIKE '%?'").scalar(Int.self) == 0)
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("moves between parents, deleted objects still held, unloaded collections and keyless queries",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func relationshipEdgeCases(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.library.createAll(on: connection)
            let setup = Session(connection: connection)
            let note = Note("movable")
            setup.addAll([Shelf(name: "A", volumes: [Volume(title: "V", notes: [note])]), Shelf(name: "B", volumes: [])])
            setup.add(Volume(title: "W", notes: []))
            try await setup.commit()

            // A volume moved from shelf A to shelf B, in a flush with no insert: its key follows.
            let session = Session(connection: connection)
            let shelves = try await session.scalars(select(Shelf.self).orderBy(Shelves.name.asc()).including(Shelf.volumes))
            let (a, b) = (shelves[0], shelves[1])
            let volume = try #require(a.volumes.value?.first)
            a.volumes = .loaded([])
            b.volumes = .loaded([volume])
            try await session.commit()
            #expect(try await connection.execute("SELECT shelf_id FROM volumes WHERE title = 'V'").scalar(Int64?.self) == .some(b.id))

            // A note moved from one volume to another with delete-orphan on: moved, not deleted.
            let volumes = try await session.scalars(select(Volume.self).orderBy(Volumes.title.asc()).including(Volume.notes))
            let (v, w) = (volumes[0], volumes[1])
            let moved = try #require(v.notes.value?.first)
            v.notes = .loaded([])
            w.notes = .loaded([moved])
            try await session.commit()
            #expect(try await connection.execute("SELECT volume_id FROM notes").scalars(Int64.self) == [w.id ?? -1])

            // A volume deleted while its shelf's loaded collection still holds it: not inserted again later.
            try session.delete(w)
            try await session.commit()
            b.volumes = .loaded((b.volumes.value ?? []) + [w])
            try await session.commit()
            #expect(try await Self.rows(Volumes.self, connection) == 1)
            #expect(try await Self.rows(Notes.self, connection) == 0)

            // A query that does not select the primary key cannot give objects.
            await #expect { _ = try await session.objects(select(Shelves.name).from(Shelves.self), as: Shelf.self) } throws: {
                ($0 as? SQLError)?.kind == .misuse
            }
            try await session.commit()
            try await Self.library.dropAll(on: connection)

            // A many-to-many collection assigned without being loaded: its rows are unknown, so it is refused.
            let tagging = Metadata(Posts.self, Tags.self, PostTags.self)
            try await tagging.createAll(on: connection)
            let writer = Session(connection: connection)
            writer.add(TaggedPost(title: "T", tags: [Tag(label: "x")]))
            try await writer.commit()
            let reader = Session(connection: connection)
            let post = try #require(try await reader.scalar(select(TaggedPost.self)))
            post.tags = .loaded([Tag(label: "y")])
            await #expect { try await reader.commit() } throws: { ($0 as? SQLError)?.kind == .misuse }
            #expect(try await Self.rows(PostTags.self, connection) == 1)
            try await tagging.dropAll(on: connection)
        }
    }
}
