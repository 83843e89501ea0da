@testable import SQLAsync
import Testing

/// The flush's plan, without a database: tables, levels and batches from changes given as values.
@Suite("Unit of work (flush plan)")
struct UnitOfWorkTests {
    /// authors ← books (author_id), and nodes (parent_id → nodes.id) referencing themselves.
    let authors = Table("authors", columns: [ColumnDefinition(name: "id", type: .int64, nullable: false, options: [.primaryKey])])
    let books = Table("books", columns: [
        ColumnDefinition(name: "id", type: .int64, nullable: false, options: [.primaryKey]),
        ColumnDefinition(name: "author_id", type: .int64, nullable: false,
                         options: [ColumnOption(kind: .references(ForeignKeyTarget(table: "authors", column: "id", onDelete: .noAction, onUpdate: .noAction)))]),
    ])
    let nodes = Table("nodes", columns: [
        ColumnDefinition(name: "id", type: .int64, nullable: false, options: [.primaryKey]),
        ColumnDefinition(name: "parent_id", type: .int64, nullable: true,
                         options: [ColumnOption(kind: .references(ForeignKeyTarget(table: "nodes", column: "id", onDelete: .noAction, onUpdate: .noAction)))]),
    ])
    let noKey = Table("log", columns: [ColumnDefinition(name: "line", type: .text, nullable: false)])

    final class Marker {}
    let markers = (0..<4).map { _ in Marker() }

    func model(_ number: Int, _ table: Table) -> UnitOfWork.ModelTable {
        UnitOfWork.ModelTable(id: ObjectIdentifier(markers[number]), table: table)
    }

    func row(_ id: Int, parent: Int?) -> Row {
        Row(columns: ["id", "parent_id"], values: [.integer(Int64(id)), parent.map { .integer(Int64($0)) } ?? .null])
    }

    func plan(
        _ models: [UnitOfWork.ModelTable], inserts: [UnitOfWork.Change] = [], deletes: [UnitOfWork.Change] = [],
        insertValues: [Row] = [], links: [(Int, Int)] = [], deleteValues: [Row] = []
    ) throws -> FlushPlan {
        try UnitOfWork.plan(
            models: models, inserts: inserts, deletes: deletes,
            insertReferences: { batch in
                UnitOfWork.SelfReferences(values: batch.map { insertValues[$0.entry] }, links: links)
            },
            deleteReferences: { batch in batch.map { deleteValues[$0.entry] } })
    }

    @Test("one model, one table: one batch of everything, in the order added")
    func single() throws {
        let changes = (0..<5).map { UnitOfWork.Change(entry: $0, model: 0) }
        let result = try plan([model(0, books)], inserts: changes, deletes: [UnitOfWork.Change(entry: 9, model: 0)])
        #expect(result.tables == ["books"])
        #expect(result.inserts == [[[[0, 1, 2, 3, 4]]]])  // a table, a level, a batch
        #expect(result.deletes == [[[[9]]]])
    }

    @Test("parents are inserted before children and deleted after them; models sharing a table are batched apart")
    func tableOrder() throws {
        // Added children first: the plan still inserts authors first.
        let models = [model(0, books), model(1, authors), model(2, books)]
        let inserts = [
            UnitOfWork.Change(entry: 0, model: 0), UnitOfWork.Change(entry: 1, model: 1),
            UnitOfWork.Change(entry: 2, model: 2), UnitOfWork.Change(entry: 3, model: 0),
        ]
        let deletes = [UnitOfWork.Change(entry: 4, model: 1), UnitOfWork.Change(entry: 5, model: 0)]
        let result = try plan(models, inserts: inserts, deletes: deletes)
        #expect(result.tables == ["authors", "books"])
        #expect(result.inserts == [[[[1]]], [[[0, 3], [2]]]])
        #expect(result.deletes == [[[[5]]], [[[4]]]])
    }

    @Test("a tree: inserted a level at a time, parents first (by keys and by relationships); deleted children first")
    func selfReferencing() throws {
        let models = [model(0, nodes)]
        let changes = (0..<4).map { UnitOfWork.Change(entry: $0, model: 0) }
        // 0 is the root; 1 and 2 point to it by key; 3's parent is 2, known only through a relationship.
        let values = [row(10, parent: nil), row(11, parent: 10), row(12, parent: 10), row(13, parent: nil)]
        let result = try plan(models, inserts: changes, insertValues: values, links: [(2, 3)])
        #expect(result.inserts == [[[[0]], [[1, 2]], [[3]]]])
        let deleteValues = [row(10, parent: nil), row(11, parent: 10), row(12, parent: 10), row(13, parent: 12)]
        let deleted = try plan(models, deletes: changes, deleteValues: deleteValues)
        #expect(deleted.deletes == [[[[3]], [[1, 2]], [[0]]]])
    }

    @Test("what cannot be planned is a typed error: a cycle of rows, a table without a primary key")
    func refusals() throws {
        let changes = (0..<2).map { UnitOfWork.Change(entry: $0, model: 0) }
        let cycle = [row(1, parent: 2), row(2, parent: 1)]
        #expect { try plan([model(0, nodes)], inserts: changes, insertValues: cycle) } throws: {
            ($0 as? SQLError)?.kind == .misuse && "\($0)".contains("cycle")
        }
        #expect { try plan([model(0, nodes)], deletes: changes, deleteValues: cycle) } throws: {
            ($0 as? SQLError)?.kind == .misuse
        }
        #expect { try plan([model(0, noKey)], inserts: changes) } throws: {
            ($0 as? SQLError)?.kind == .misuse && "\($0)".contains("primary key")
        }
    }

    @Test("levels: a topological order in layers, nil for a cycle")
    func levels() {
        #expect(UnitOfWork.levels(count: 4, edges: [(0, 1), (1, 2), (0, 3)]) == [[0], [1, 3], [2]])
        #expect(UnitOfWork.levels(count: 3, edges: [(0, 1), (1, 2), (2, 0)]) == nil)
        #expect(UnitOfWork.levels(count: 2, edges: [(1, 1)]) == [[0, 1]], "a row that is its own parent is no cycle")
    }
}
