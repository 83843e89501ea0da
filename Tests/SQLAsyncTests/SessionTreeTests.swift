import Logging
import Runtime
@testable import SQLAsync
import TestSupport
import Testing

// A table that references itself: categories in a tree.

enum Categories: TableSchema {
    static let tableName = "categories"
    static let id = Column<Int64>("id", of: Categories.self, .primaryKey, .autoIncrement)
    static let parentID = Column<Int64?>("parent_id", of: Categories.self, .references(Categories.id))
    static let name = Column<String>("name", of: Categories.self)
    static let columns: [any AnyColumn] = [id, parentID, name]
}

final class Category: Model {
    typealias Schema = Categories
    var id: Int64?
    var parentID: Int64?
    var name: String
    var parent: Related<Category?> = .notLoaded
    var children: Related<[Category]> = .notLoaded
    static let parent = ToOne(\Category.parent, key: Categories.parentID, parent: Categories.id)
    static let children = ToMany(\Category.children, key: Categories.id, children: Categories.parentID, cascade: .all)
    static var relationships: [any Relationship<Category>] { [parent, children] }

    init(_ name: String, children: [Category]? = nil) {
        self.name = name
        if let children { self.children = .loaded(children) }
    }
    convenience init(row: Row) throws {
        self.init("")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Categories.id.name)
        parentID = try row.decode(Categories.parentID.name)
        name = try row.decode(Categories.name.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Categories.id] = id
        values[Categories.parentID] = parentID
        values[Categories.name] = name
    }
}

/// The same table, its columns encoded in the reverse order (the rows read have the table's order).
final class ReversedCategory: Model {
    typealias Schema = Categories
    var id: Int64?
    var parentID: Int64?
    var name: String

    init(name: String) { self.name = name }
    convenience init(row: Row) throws {
        self.init(name: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Categories.id.name)
        parentID = try row.decode(Categories.parentID.name)
        name = try row.decode(Categories.name.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Categories.name] = name
        values[Categories.parentID] = parentID
        values[Categories.id] = id
    }
}

/// The same table again, its `encode(to:)` building its values apart and assigning them whole.
final class AssigningCategory: Model {
    typealias Schema = Categories
    var id: Int64?
    var parentID: Int64?
    var name: String

    init(name: String) { self.name = name }
    convenience init(row: Row) throws {
        self.init(name: "")
        try update(from: row)
    }
    func update(from row: Row) throws {
        id = try row.decode(Categories.id.name)
        parentID = try row.decode(Categories.parentID.name)
        name = try row.decode(Categories.name.name)
    }
    func encode(to values: inout ColumnValues) {
        var built = ColumnValues()
        built[Categories.id] = id
        built[Categories.parentID] = parentID
        built[Categories.name] = name
        values = built
    }
}

/// Shares a session between tasks on one actor (which the session's rules ask not to do).
actor SharedSession {
    let session: Session
    init(_ session: Session) { self.session = session }
    func add(_ name: String) { session.add(Category(name)) }
    func flush() async throws { try await session.flush() }
    func rollback() async { await session.rollback() }
}

@Suite("ORM trees, long key lists and loads that keep unflushed changes", .limit(minutes: 1))
struct SessionTreeTests {
    static let schema = Metadata(Categories.self)

    /// name → parent's name, as stored.
    static func tree(_ connection: Connection) async throws -> [String: String] {
        let rows = try await connection.execute(
            "SELECT c.name, p.name FROM categories c LEFT JOIN categories p ON p.id = c.parent_id")
        var tree: [String: String] = [:]
        for row in rows { tree[try row.decode(0, as: String.self)] = try row.decode(1, as: String?.self) ?? "-" }
        return tree
    }

    @Test("a tree added in one flush goes in parents first, a level at a time; deleted in one flush, children first",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func treeInOneFlush(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.schema.createAll(on: connection)
            let session = Session(connection: connection)
            // Through many-to-one parents, the deepest added first: the database generates every key, so
            // each row can go in only after its parent's.
            let (root, branch, leaf) = (Category("root"), Category("branch"), Category("leaf"))
            leaf.parent = .loaded(branch)
            branch.parent = .loaded(root)
            session.add(leaf)
            // Through one-to-many children, a child tracked before its parent.
            let bottom = Category("bottom")
            let top = Category("top", children: [Category("middle", children: [bottom])])
            session.add(bottom)
            session.add(top)
            try await session.commit()
            #expect(branch.parentID == root.id && leaf.parentID == branch.id && root.parentID == nil)
            #expect(try await Self.tree(connection) == [
                "root": "-", "branch": "root", "leaf": "branch", "top": "-", "middle": "top", "bottom": "middle",
            ])

            // Deleting the roots deletes their subtrees (cascade), leaves first: no row is ever left pointing
            // at a deleted one, which both databases check at once.
            let deleter = Session(connection: connection)
            for id in [root.id, top.id] {
                let key = try #require(id)
                let category = try #require(try await deleter.get(Category.self, key))
                try deleter.delete(category)
            }
            try await deleter.commit()
            #expect(try await Self.tree(connection).isEmpty)
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("new rows that reference each other in a cycle are refused, and the session rolls back",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func cycleRefused(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.schema.createAll(on: connection)
            let session = Session(connection: connection)
            let (a, b) = (Category("a"), Category("b"))
            a.parent = .loaded(b)
            b.parent = .loaded(a)
            session.add(a)
            await #expect { try await session.flush() } throws: {
                ($0 as? SQLError)?.kind == .misuse && "\($0)".contains("cycle")
            }
            #expect(!session.contains(a) && !session.contains(b))
            #expect(try await Self.tree(connection).isEmpty)
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("where a child's parent and a parent's collection disagree, the side changed since the load wins",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func changedSideWins(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.schema.createAll(on: connection)
            let writer = Session(connection: connection)
            writer.addAll([Category("a", children: [Category("a1"), Category("a2")]), Category("b")])
            try await writer.commit()

            func load(_ session: Session) async throws -> (a: Category, b: Category, a1: Category, a2: Category) {
                let parents = try await session.scalars(
                    select(Category.self).where(Categories.parentID == nil).orderBy(Categories.name.asc()).including(Category.children))
                let children = try await session.scalars(
                    select(Category.self).where(Categories.parentID != nil).orderBy(Categories.name.asc()).joined(Category.parent))
                return (parents[0], parents[1], children[0], children[1])
            }
            // Moved through the collections: a1's own `parent` still says a, unchanged since it was loaded.
            let mover = Session(connection: connection)
            var (a, b, a1, a2) = try await load(mover)
            #expect(a1.parent.value.flatMap { $0 } === a)
            a.children = .loaded([a2])
            b.children = .loaded([a1])
            try await mover.commit()
            #expect(try await Self.tree(connection)["a1"] == "b")

            // Moved through the child's parent: the collections, unchanged, still hold it where it was.
            let other = Session(connection: connection)
            (a, b, a1, a2) = try await load(other)
            a2.parent = .loaded(b)
            try await other.commit()
            #expect(try await Self.tree(connection)["a2"] == "b")
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("the change check: an object read and not changed is never written, whatever order it encodes in; a changed one writes its changed columns",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func changeCheck(_ backend: TestBackend, _ database: TestDatabase) async throws {
        // The check compares values as the object encodes itself, against its row, in order.
        let row = Row(columns: ["id", "parent_id", "name"], values: [.integer(1), .null, .text("a")])
        var values = ColumnValues()
        values.setReference(row)
        func check(_ encode: (inout ColumnValues) -> Void) -> Bool { values.matches(offset: 0, encode: encode) }
        #expect(check { $0["id"] = .integer(1); $0["parent_id"] = SQLValue.null; $0["name"] = .text("a") })
        #expect(check { $0["id"] = .integer(1) }, "fewer columns than the row is a match")
        #expect(!check { $0["id"] = .integer(1); $0["parent_id"] = SQLValue.null; $0["name"] = .text("b") })
        #expect(!check { $0["name"] = .text("a"); $0["id"] = .integer(1) }, "another order is not a match")
        #expect(!check { $0["id"] = .integer(1); $0["id"] = nil }, "a removal is not a match")
        var seen: [SQLValue?] = []
        #expect(check { values in
            values["id"] = .integer(1)
            seen = [values["id"], values["name"]]
        })
        #expect(seen == [.integer(1), nil], "reads see what was set so far")

        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func updates() -> [String] { logs.all.filter { $0.contains("execute") && $0.contains("UPDATE") } }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.schema.createAll(on: connection)
            let writer = Session(connection: connection)
            writer.addAll([Category("a", children: [Category("a.1")]), Category("b")])
            try await writer.commit()

            for reversed in [false, true] {
                let reader = Session(connection: connection)
                let before = updates().count
                if reversed {
                    let loaded = try await reader.scalars(select(ReversedCategory.self).orderBy(Categories.name.asc()))
                    #expect(loaded.map(\.name) == ["a", "a.1", "b1"])
                    try await reader.commit()
                    #expect(updates().count == before, "unchanged objects were written: \(updates().suffix(2))")
                    loaded[2].name = "b2"
                } else {
                    let loaded = try await reader.scalars(select(Category.self).orderBy(Categories.name.asc()))
                    try await reader.commit()
                    #expect(updates().count == before, "unchanged objects were written: \(updates().suffix(2))")
                    loaded[2].name = "b1"
                }
                try await reader.commit()
                #expect(updates().count == before + 1)
                let update = updates().last ?? ""
                #expect(update.contains(#"SET "name" = "#) && !update.contains(#""parent_id" ="#), "\(update)")
                try await reader.commit()
                #expect(updates().count == before + 1, "a written change is the new snapshot: nothing more to write")
            }
            #expect(try await Self.tree(connection)["b2"] == "-")
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("forgotten objects are dropped from the session's storage: what remains keeps its identity, snapshot and changes",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func forgottenEntriesDropped(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func statements(_ verb: String) -> Int { logs.all.filter { $0.contains("execute") && $0.contains(verb) }.count }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.schema.createAll(on: connection)
            let writer = Session(connection: connection)
            writer.addAll((1...10).map { Category("c\($0)") })
            try await writer.commit()

            let session = Session(connection: connection)
            session.autoflush = false
            let first = try await session.scalars(select(Category.self).orderBy(Categories.name.asc()))
            // A second query with more rows: its result is a second store, shared by the new objects only.
            let second = try await session.scalars(select(Category.self).where(Categories.name.like("c1%")))
            #expect(second.allSatisfy { object in first.contains { $0 === object } })
            // Seven of ten forgotten (expunged or deleted): the next flush drops their entries.
            for object in first.prefix(4) { session.expunge(object) }
            for object in first.dropFirst(4).prefix(3) { try session.delete(object) }
            let kept = Array(first.suffix(3))
            kept[0].name = "renamed"
            let (updates, deletes) = (statements("UPDATE"), statements("DELETE"))
            try await session.flush()
            #expect(statements("DELETE") - deletes == 1, "the three deletes in one batch")
            #expect(statements("UPDATE") - updates == 1)
            // This flush drops the seven forgotten entries (the deletes' three are forgotten once written). The
            // remaining objects keep their snapshots (nothing to write), their identity (no query for them).
            try await session.flush()
            #expect(statements("UPDATE") - updates == 1, "an unchanged object was written after the compaction")
            #expect(session.trackedCount == 3)
            let selects = statements("SELECT")
            for object in kept {
                #expect(try await session.get(Category.self, try #require(object.id)) === object)
                #expect(session.contains(object))
            }
            #expect(statements("SELECT") == selects)
            // A forgotten key is loaded again as a new object.
            let again = try await session.get(Category.self, try #require(first[0].id))
            #expect(again != nil && again !== first[0] && !session.contains(first[0]))
            kept[1].name = "renamed too"
            try await session.commit()
            #expect(try await Self.tree(connection).keys.sorted() == ["c1", "c10", "c2", "c3", "c9", "renamed", "renamed too"])
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("models sharing a table are written apart; an encode(to:) that assigns its values whole is still checked; snapshots a session no longer needs are let go",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func sharedTablesAndSnapshots(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func updates() -> [String] { logs.all.filter { $0.contains("execute") && $0.contains("UPDATE") } }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.schema.createAll(on: connection)
            // Two models of one table in one flush: each inserted, updated and deleted with its own encoding,
            // and each found under its own type in the identity map.
            let session = Session(connection: connection)
            let category = Category("plain")
            let reversed = ReversedCategory(name: "reversed")
            session.add(category)
            session.add(reversed)
            try await session.flush()
            let categoryID = try #require(category.id)
            let reversedID = try #require(reversed.id)
            #expect(try await session.get(Category.self, categoryID) === category)
            #expect(try await session.get(ReversedCategory.self, reversedID) === reversed)
            category.name = "plain 2"
            reversed.name = "reversed 2"
            try await session.flush()
            #expect(try await Self.tree(connection).keys.sorted() == ["plain 2", "reversed 2"])
            try session.delete(category)
            try session.delete(reversed)
            try await session.commit()
            #expect(try await Self.tree(connection).isEmpty)

            // An encode(to:) that assigns a whole ColumnValues: unchanged objects are not written, changed ones are.
            let writer = Session(connection: connection)
            writer.addAll((1...5).map { Category("c\($0)") })
            try await writer.commit()
            let reader = Session(connection: connection)
            let loaded = try await reader.scalars(select(AssigningCategory.self).orderBy(Categories.name.asc()))
            let before = updates().count
            try await reader.flush()
            #expect(updates().count == before, "unchanged objects were written")
            #expect(reader.liveStoreCount == 1, "one store: the result the five objects were loaded from")
            for object in loaded { object.name += "!" }
            try await reader.flush()
            #expect(updates().count == before + 1, "one batch of five updates")
            #expect(try await Self.tree(connection).keys.sorted() == ["c1!", "c2!", "c3!", "c4!", "c5!"])
            // Every object has a snapshot of its own now: the result's rows are let go.
            #expect(reader.liveStoreCount == 5)
            // A query of objects already tracked keeps no reference to its result.
            _ = try await reader.scalars(select(AssigningCategory.self))
            #expect(reader.liveStoreCount == 5)
            try await reader.commit()
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("get: from the identity map, or an added object not inserted yet, or one query without a flush",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func getWithoutFlush(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func statements(_ verb: String) -> Int { logs.all.filter { $0.contains("execute") && $0.contains(verb) }.count }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.schema.createAll(on: connection)
            let writer = Session(connection: connection)
            writer.addAll((1...3).map { Category("c\($0)") })
            try await writer.commit()

            let session = Session(connection: connection)
            let loaded = try await session.scalars(select(ReversedCategory.self).orderBy(Categories.name.asc()))
            loaded[0].name = "changed"
            let (selects, updates, inserts) = (statements("SELECT"), statements("UPDATE"), statements("INSERT"))
            // A key the session does not have: one query, and the pending change is not flushed for it.
            #expect(try await session.get(ReversedCategory.self, Int64(999)) == nil)
            #expect(statements("SELECT") == selects + 1 && statements("UPDATE") == updates)
            // An added object with an explicit key: found without a query or an insert.
            let added = ReversedCategory(name: "added")
            added.id = 500
            session.add(added)
            #expect(try await session.get(ReversedCategory.self, Int64(500)) === added)
            #expect(statements("SELECT") == selects + 1 && statements("INSERT") == inserts)
            // A deleted one: nil, without a query.
            try session.delete(loaded[1])
            #expect(try await session.get(ReversedCategory.self, try #require(loaded[1].id)) == nil)
            #expect(statements("SELECT") == selects + 1)
            try await session.commit()
            #expect(statements("UPDATE") == updates + 1 && statements("INSERT") == inserts + 1)
            #expect(try await Self.tree(connection).keys.sorted() == ["added", "c3", "changed"])

            // merge, unlike get, writes pending changes first: a deleted row replaced by a merged object.
            try session.delete(loaded[2])
            let replacement = ReversedCategory(name: "replacement")
            replacement.id = loaded[2].id
            #expect(try await session.merge(replacement) === replacement)
            try await session.commit()
            #expect(try await Self.tree(connection).keys.sorted() == ["added", "changed", "replacement"])
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("a session shared by two tasks of one actor: a flush whose entries another task rolled back stops with a typed error",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func sharedSessionMisuse(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.schema.createAll(on: connection)
            for _ in 0..<5 {
                let shared = SharedSession(Session(connection: connection))
                for index in 0..<20 { await shared.add("c\(index)") }
                // Whichever order the actor runs them in, nothing traps: the flush completes, or (rolled back
                // under it) stops with misuse.
                let outcome = await withTaskGroup(of: String.self) { group in
                    group.addTask {
                        do {
                            try await shared.flush()
                            return "flushed"
                        } catch let error as SQLError where error.kind == .misuse {
                            return "misuse"
                        } catch {
                            return "\(error)"
                        }
                    }
                    group.addTask {
                        await shared.rollback()
                        return "rolled back"
                    }
                    return await group.reduce(into: [String]()) { $0.append($1) }
                }
                #expect(outcome.contains("rolled back") && (outcome.contains("flushed") || outcome.contains("misuse")), "\(outcome)")
                await shared.rollback()
            }
            try await Self.schema.dropAll(on: connection)
        }
    }

    @Test("eager loading splits long key lists; with autoflush off, a load keeps a collection changed and not flushed",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func keyListsAndUnflushedCollections(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let logs = CapturedLogs()
        var logger = Logger(label: "orm") { _ in CapturingHandler(sink: logs) }
        logger.logLevel = .debug
        func selects() -> Int { logs.all.filter { $0.contains("execute") && $0.contains("SELECT") }.count }
        try await database.withPrivateConnection(backend, logger: logger) { connection in
            try await Self.schema.createAll(on: connection)
            let writer = Session(connection: connection)
            let parents = (1...5).map { index in Category("p\(index)", children: (1...index).map { Category("p\(index).\($0)") }) }
            writer.addAll(parents)
            try await writer.commit()

            // Two keys per IN list: the five parents' children come in three queries, each to its parent.
            let reader = Session(connection: connection)
            reader.inListLimit = 2
            let before = selects()
            let loaded = try await reader.scalars(
                select(Category.self).where(Categories.parentID == nil).orderBy(Categories.name.asc()).including(Category.children))
            #expect(selects() - before == 4, "the parents, then their children in 3 queries: \(selects() - before) ran")
            #expect(loaded.map(\.name) == ["p1", "p2", "p3", "p4", "p5"])
            for (index, parent) in loaded.enumerated() {
                #expect(parent.children.value?.map(\.name).sorted() == (1...index + 1).map { "p\(index + 1).\($0)" })
            }

            // A child taken out with autoflush off: loading the collection again keeps the change (it would
            // otherwise be lost), and the commit deletes the orphan.
            reader.autoflush = false
            let p2 = loaded[1]
            p2.children = .loaded((p2.children.value ?? []).filter { $0.name != "p2.1" })
            let again = try await reader.load(Category.children, of: p2)
            #expect(again.map(\.name) == ["p2.2"])
            _ = try await reader.scalars(select(Category.self).where(Categories.name == "p2").including(Category.children))
            #expect(p2.children.value?.map(\.name) == ["p2.2"])
            try await reader.commit()
            #expect(try await Self.tree(connection)["p2.1"] == nil)
            #expect(try await Self.tree(connection).count == 5 + 15 - 1)
            try await Self.schema.dropAll(on: connection)
        }
    }
}
