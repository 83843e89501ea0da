import Logging
import Runtime
import SQLAsync
import TestSupport
import Testing

enum Authors: TableSchema {
    static let tableName = "authors"
    static let id = Column<Int64>("id", of: Authors.self, .primaryKey, .autoIncrement)
    static let name = Column<String>("name", of: Authors.self, .unique)
    static let born = Column<Int32?>("born", of: Authors.self)
    static let columns: [any AnyColumn] = [id, name, born]
}

enum Books: TableSchema {
    static let tableName = "books"
    static let id = Column<Int64>("id", of: Books.self, .primaryKey, .autoIncrement)
    static let authorID = Column<Int64>("author_id", of: Books.self, .references(Authors.id))
    static let title = Column<String>("title", of: Books.self)
    static let pages = Column<Int32>("pages", of: Books.self, .default(0))
    static let columns: [any AnyColumn] = [id, authorID, title, pages]
}

final class Author: Model {
    typealias Schema = Authors
    var id: Int64?
    var name: String
    var born: Int32?
    /// Not loaded until asked for: reading it is a switch, never a query.
    var books: Related<[Book]> = .notLoaded
    static let books = ToMany(\Author.books, key: Authors.id, children: Books.authorID)

    init(name: String, born: Int32? = nil) {
        self.name = name
        self.born = born
    }

    convenience init(row: Row) throws {
        self.init(name: "")
        try update(from: row)
    }

    func update(from row: Row) throws {
        id = try row.decode(Authors.id.name)
        name = try row.decode(Authors.name.name)
        born = try row.decode(Authors.born.name)
    }

    func encode(to values: inout ColumnValues) {
        values[Authors.id] = id
        values[Authors.name] = name
        values[Authors.born] = born
    }
}

final class Book: Model {
    typealias Schema = Books
    var id: Int64?
    var authorID: Int64
    var title: String
    var pages: Int32
    var author: Related<Author?> = .notLoaded
    static let author = ToOne(\Book.author, key: Books.authorID, parent: Authors.id)

    init(author: Author, title: String, pages: Int32) {
        authorID = author.id ?? 0
        self.title = title
        self.pages = pages
    }

    init(row: Row) throws {
        id = try row.decode(Books.id.name)
        authorID = try row.decode(Books.authorID.name)
        title = try row.decode(Books.title.name)
        pages = try row.decode(Books.pages.name)
    }

    func update(from row: Row) throws {
        id = try row.decode(Books.id.name)
        authorID = try row.decode(Books.authorID.name)
        title = try row.decode(Books.title.name)
        pages = try row.decode(Books.pages.name)
    }

    func encode(to values: inout ColumnValues) {
        values[Books.id] = id
        values[Books.authorID] = authorID
        values[Books.title] = title
        values[Books.pages] = pages
    }
}

/// A composite primary key and a version column.
enum Editions: TableSchema {
    static let tableName = "editions"
    static let isbn = Column<String>("isbn", of: Editions.self)
    static let year = Column<Int16>("year", of: Editions.self)
    static let title = Column<String>("title", of: Editions.self)
    static let version = Column<Int64>("version", of: Editions.self, .default(1))
    static let columns: [any AnyColumn] = [isbn, year, title, version]
    static let constraints: [TableConstraint] = [.primaryKey(isbn, year)]
}

final class Edition: Model {
    typealias Schema = Editions
    static var versionColumn: Column<Int64>? { Editions.version }
    let isbn: String
    let year: Int16
    var title: String
    var version: Int64 = 1

    init(isbn: String, year: Int16, title: String) {
        self.isbn = isbn
        self.year = year
        self.title = title
    }

    init(row: Row) throws {
        isbn = try row.decode(Editions.isbn.name)
        year = try row.decode(Editions.year.name)
        title = try row.decode(Editions.title.name)
        version = try row.decode(Editions.version.name)
    }

    func encode(to values: inout ColumnValues) {
        values[Editions.isbn] = isbn
        values[Editions.year] = year
        values[Editions.title] = title
        values[Editions.version] = version
    }

    func update(from row: Row) throws {
        title = try row.decode(Editions.title.name)
        version = try row.decode(Editions.version.name)
    }
}

enum Posts: TableSchema {
    static let tableName = "posts"
    static let id = Column<Int64>("id", of: Posts.self, .primaryKey, .autoIncrement)
    static let title = Column<String>("title", of: Posts.self)
    static let columns: [any AnyColumn] = [id, title]
}

enum Tags: TableSchema {
    static let tableName = "tags"
    static let id = Column<Int64>("id", of: Tags.self, .primaryKey, .autoIncrement)
    static let label = Column<String>("label", of: Tags.self, .unique)
    static let featured = Column<Bool>("featured", of: Tags.self, .default(false))
    static let columns: [any AnyColumn] = [id, label, featured]
}

enum PostTags: TableSchema {
    static let tableName = "post_tags"
    static let postID = Column<Int64>("post_id", of: PostTags.self, .references(Posts.id, onDelete: .cascade))
    static let tagID = Column<Int64>("tag_id", of: PostTags.self, .references(Tags.id, onDelete: .cascade))
    static let columns: [any AnyColumn] = [postID, tagID]
    static let constraints: [TableConstraint] = [.primaryKey(postID, tagID)]
}

final class Post: Model {
    typealias Schema = Posts
    var id: Int64?
    var title: String
    var tags: Related<[Tag]> = .notLoaded
    static let tags = ManyToMany(\Post.tags, key: Posts.id, through: PostTags.postID, PostTags.tagID, to: Tags.id)

    init(title: String) { self.title = title }
    init(row: Row) throws { id = try row.decode(Posts.id.name); title = try row.decode(Posts.title.name) }
    func update(from row: Row) throws { id = try row.decode(Posts.id.name); title = try row.decode(Posts.title.name) }
    func encode(to values: inout ColumnValues) { values[Posts.id] = id; values[Posts.title] = title }
}

final class Tag: Model {
    typealias Schema = Tags
    var id: Int64?
    var label: String
    var featured = false
    init(label: String) { self.label = label }
    convenience init(row: Row) throws {
        self.init(label: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Tags.id.name)
        label = try row.decode(Tags.label.name)
        featured = try row.decode(Tags.featured.name)
    }
    func encode(to values: inout ColumnValues) { values[Tags.id] = id; values[Tags.label] = label; values[Tags.featured] = featured }
}

@Suite("ORM session", .limit(minutes: 1))
struct SessionTests {
    static let library = Metadata(Authors.self, Books.self)

    /// The statements the connection sent, as logged (placeholders only).
    static func statements(_ logs: CapturedLogs) -> [String] {
        // The whole log line: its metadata holds the SQL text.
        logs.all.filter { $0.contains("execute") }
    }

    @Test("add, flush, identity map, changed columns only, delete children first, commit and rollback",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func unitOfWork(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.library.createAll(on: connection)
            let session = Session(connection: connection)
            let ada = Author(name: "Ada", born: 1815)
            session.add(ada)
            try await session.flush()
            let adaID = try #require(ada.id, "the generated key was not set")
            // A generated key is read back.
            let insert = Self.statements(logs).last { $0.contains("INSERT") }
            #expect(insert?.contains("RETURNING") == true, "\(insert ?? "no INSERT")")
            // Children added before their parent still insert after it.
            let grace = Author(name: "Grace")
            session.add(grace)
            try await session.flush()
            let notes = Book(author: ada, title: "Notes", pages: 66)
            let manual = Book(author: grace, title: "Manual", pages: 120)
            session.addAll([notes, manual])
            try await session.commit()

            // The identity map: the same object, and no query for it.
            let before = logs.all.count
            let again = try await session.get(Author.self, adaID)
            #expect(again === ada)
            #expect(logs.all.count == before, "get of a loaded key ran a query")

            // Only the changed column is updated.
            ada.born = 1816
            try await session.flush()
            let update = Self.statements(logs).last { $0.contains("UPDATE") }
            #expect(update?.contains(#"SET "born" = "#) == true && update?.contains(#""name""#) == false, "\(update ?? "no UPDATE")")

            // A query returns tracked objects as they are.
            let fromQuery = try await session.objects(select(all: Authors.self).orderBy(Authors.name.asc()), as: Author.self)
            #expect(fromQuery.count == 2 && fromQuery[0] === ada && fromQuery[1] === grace)

            // Deleting a parent and its child: the child goes first (the foreign key would refuse the reverse).
            try session.delete(grace)
            try session.delete(manual)
            try await session.commit()
            #expect(try await connection.execute(select(count()).from(Books.self)).scalar(Int.self) == 1)

            // Rollback: the change is undone in the database and the session forgets its objects.
            ada.name = "Countess"
            try await session.flush()
            await session.rollback()
            let fresh = Session(connection: connection)
            let reloaded = try await fresh.get(Author.self, adaID)
            #expect(reloaded?.name == "Ada" && reloaded !== ada)
            #expect(try await fresh.get(Author.self, Int64(999_999)) == nil)
            try await fresh.commit()
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("engine.withSession commits, or rolls back on an error", arguments: TestBackend.selected, PoolDatabase.allCases)
    func scopedSessions(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        // PostgreSQL: a schema of its own for every connection of the engine, through libpq's `options` —
        // which a pooler drops, so this one talks to the server directly.
        let schema = "orm_\(UInt32.random(in: 0...UInt32.max))"
        try await database.withEngine(.patient, direct: true) { plain in
            let engine: Engine
            if database == .postgresql {
                let url = try postgresURL(direct: true)
                try await backend.run {
                    try await plain.withConnection { try await $0.execute("CREATE SCHEMA \(SQL.identifier(schema))") }
                    await plain.dispose()
                }
                engine = try Engine(
                    "postgresql://\(url.user ?? "postgres")@\(url.host ?? "127.0.0.1"):\(url.port ?? 5432)/\(url.databaseName ?? "postgres")"
                        + "?options=-c%20search_path%3D\(schema)", logger: quietLogger)
            } else {
                engine = plain
            }
            try await backend.run {
                try await engine.withConnection { try await Self.library.createAll(on: $0) }
                try await engine.withSession { session in session.add(Author(name: "Kept")) }
                struct Abort: Error {}
                await #expect(throws: Abort.self) {
                    try await engine.withSession { session in
                        session.add(Author(name: "Dropped"))
                        try await session.flush()  // written, then rolled back
                        throw Abort()
                    }
                }
                let names = try await engine.withSession { session in
                    try await session.objects(select(all: Authors.self), as: Author.self).map(\.name)
                }
                #expect(names == ["Kept"])
                try await engine.withConnection { connection in
                    if database == .postgresql {
                        try await connection.execute("DROP SCHEMA \(SQL.identifier(schema)) CASCADE")
                    } else {
                        try await Self.library.dropAll(on: connection)
                    }
                }
                await engine.dispose()
            }
        }
    }

    @Test("relationships load only when asked: explicitly, or eagerly per query with one query per relationship",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func relationships(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        /// Queries sent so far (a session's BEGIN is not one).
        func selects(_ logs: CapturedLogs) -> Int { logs.all.filter { $0.contains("execute") && $0.contains("SELECT") }.count }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.library.createAll(on: connection)
            let writer = Session(connection: connection)
            let ada = Author(name: "Ada")
            let grace = Author(name: "Grace")
            writer.addAll([ada, grace])
            try await writer.flush()
            writer.addAll([Book(author: ada, title: "Notes", pages: 66), Book(author: ada, title: "Sketch", pages: 12),
                           Book(author: grace, title: "Manual", pages: 120)])
            try await writer.commit()

            let session = Session(connection: connection)
            let authors = try await session.objects(select(all: Authors.self).orderBy(Authors.name.asc()), as: Author.self)
            // The type says it: an unloaded relationship is not an array (`authors[0].books.count` does not
            // compile), and reading it ran no query.
            #expect(authors[0].books.value == nil && !authors[0].books.isLoaded)
            let countBefore = selects(logs)
            let adasBooks = try await session.load(Author.books, of: authors[0])
            #expect(adasBooks.map(\.title).sorted() == ["Notes", "Sketch"])
            #expect(authors[0].books.value?.count == 2)
            #expect(selects(logs) - countBefore == 1, "loading one relationship took \(selects(logs) - countBefore) queries")

            // Many-to-one: the parent is in the identity map already, so no query.
            let notes = try #require(adasBooks.first { $0.title == "Notes" })
            let beforeParent = selects(logs)
            let parent = try await session.load(Book.author, of: notes)
            #expect(parent === authors[0])
            #expect(selects(logs) == beforeParent, "a loaded parent was queried again")

            // Eager loading per query: the authors, then one query for all their books.
            let eager = Session(connection: connection)
            let beforeEager = selects(logs)
            let loaded = try await eager.objects(
                select(all: Authors.self).orderBy(Authors.name.asc()), as: Author.self, including: [Author.books])
            #expect(loaded.map { $0.books.value?.count ?? -1 } == [2, 1])
            #expect(selects(logs) - beforeEager == 2, "eager loading took \(selects(logs) - beforeEager) queries")
            try await eager.commit()
            try await session.commit()
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("a failed flush rolls back and leaves the session empty and usable; a cancelled flush leaves nothing behind",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func failuresAndCancellation(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.library.createAll(on: connection)
            let session = Session(connection: connection)
            session.add(Author(name: "Ada"))
            try await session.commit()
            // A unique violation in the middle of a flush: typed error, nothing of the flush kept.
            let twin = Author(name: "Ada")
            session.addAll([Author(name: "Before"), twin])
            do {
                try await session.flush()
                Issue.record("a duplicate name was flushed")
            } catch let error as SQLError {
                #expect(error.kind == .constraint)
            }
            #expect(!connection.isInTransaction && !connection.isBroken)
            #expect(try await connection.execute(select(count()).from(Authors.self)).scalar(Int.self) == 1)
            // The session goes on: what it tracked is gone, new work flushes.
            #expect(try await session.get(Author.self, Int64(1))?.name == "Ada")
            session.add(Author(name: "After"))
            try await session.commit()
            #expect(try await connection.execute(select(count()).from(Authors.self)).scalar(Int.self) == 2)

            // Cancelled in the middle of a flush of many objects: the transaction is rolled back.
            if backend != .virtual {  // (virtual time does not move while the database works)
                for delay in [0, 1, 2, 5] {
                    let batch = Session(connection: connection)
                    batch.addAll((0..<300).map { Author(name: "bulk \(delay) \($0)") })
                    let done: Void? = try await moveOnAfter(.milliseconds(Int64(delay))) { _ in try await batch.commit() }
                    if done == nil { await batch.rollback() }
                    #expect(!connection.isInTransaction)
                    let bulk = try await connection.execute(
                        select(count()).from(Authors.self).where(Authors.name.like("bulk \(delay) %"))).scalar(Int.self)
                    #expect(bulk == 0 || bulk == 300, "a cancelled flush kept \(bulk ?? -1) of 300 rows")
                }
            }
            try await Self.library.dropAll(on: connection)
        }
    }

    @Test("composite keys through the identity map; a stale versioned update is a typed error",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func compositeKeysAndVersions(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            let metadata = Metadata(Editions.self)
            try await metadata.createAll(on: connection)
            let session = Session(connection: connection)
            let first = Edition(isbn: "978-0", year: 1843, title: "Notes")
            let second = Edition(isbn: "978-0", year: 1953, title: "Notes, reprinted")
            session.addAll([first, second])
            try await session.commit()
            // The objects set every column and their keys are text and integers: nothing to read back.
            let insert = Self.statements(logs).last { $0.contains("INSERT") }
            #expect(insert?.contains("RETURNING") == false, "\(insert ?? "no INSERT")")
            #expect(try await session.get(Edition.self, key: [.text("978-0"), .integer(1843)]) === first)
            // A query finds the inserted objects under the keys they were inserted with.
            let loaded = try await session.objects(select(all: Editions.self).orderBy(Editions.year.asc()), as: Edition.self)
            #expect(loaded.count == 2 && loaded[0] === first && loaded[1] === second)
            #expect(try await session.get(Edition.self, key: [.text("978-0"), .integer(1900)]) == nil)
            await #expect { _ = try await session.get(Edition.self, key: [.text("978-0")]) } throws: { ($0 as? SQLError)?.kind == .misuse }

            // Each update bumps the version.
            first.title = "Notes by the translator"
            try await session.commit()
            #expect(first.version == 2)
            // Someone else changes the row: this object's next update is stale.
            try await connection.execute("UPDATE editions SET version = version + \(1) WHERE year = \(1843)")
            first.title = "Lost update"
            do {
                try await session.commit()
                Issue.record("a stale update went through")
            } catch let error as SQLError {
                #expect(error.kind == .staleData)
            }
            #expect(try await connection.execute("SELECT title FROM editions WHERE year = \(1843)").scalar(String.self)
                == "Notes by the translator")
            try await metadata.dropAll(on: connection)
        }
    }

    @Test("many-to-many through an association table: loaded explicitly or eagerly, targets shared through the identity map",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func manyToMany(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            let metadata = Metadata(Posts.self, Tags.self, PostTags.self)
            try await metadata.createAll(on: connection)
            let session = Session(connection: connection)
            let (swift, sql, db) = (Tag(label: "swift"), Tag(label: "sql"), Tag(label: "db"))
            let (intro, deep, empty) = (Post(title: "Intro"), Post(title: "Deep dive"), Post(title: "Empty"))
            session.addAll([swift, sql, db])
            session.addAll([intro, deep, empty])
            try await session.flush()
            for (post, tag) in [(intro, swift), (intro, sql), (deep, sql), (deep, db)] {
                try await connection.execute(insert(into: PostTags.self).values(
                    PostTags.postID.set(post.id ?? 0), PostTags.tagID.set(tag.id ?? 0)))
            }
            try await session.commit()

            let reader = Session(connection: connection)
            let posts = try await reader.objects(
                select(all: Posts.self).orderBy(Posts.title.asc()), as: Post.self, including: [Post.tags])
            #expect(posts.map(\.title) == ["Deep dive", "Empty", "Intro"])
            #expect(posts.map { ($0.tags.value ?? []).map(\.label).sorted() } == [["db", "sql"], [], ["sql", "swift"]])
            // One object per tag: "sql" is the same object under both posts.
            let sqlUnderDeep = posts[0].tags.value?.first { $0.label == "sql" }
            let sqlUnderIntro = posts[2].tags.value?.first { $0.label == "sql" }
            #expect(sqlUnderDeep != nil && sqlUnderDeep === sqlUnderIntro)
            // Explicit loading of one post.
            let fresh = Session(connection: connection)
            let one = try #require(try await fresh.get(Post.self, intro.id ?? 0))
            #expect(try await fresh.load(Post.tags, of: one).map(\.label).sorted() == ["sql", "swift"])
            try await fresh.commit()
            try await reader.commit()
            try await metadata.dropAll(on: connection)
        }
    }
}
