import FoundationEssentials
import Runtime
import SQLAsync
import TestSupport
import Testing

/// The README's SQL examples, as they are written there (with a private database), run on every backend ×
/// both databases so that the README cannot drift from the API.
enum Readme {
    enum Owners: TableSchema {
        static let tableName = "owners"
        static let id = Column<Int64>("id", of: Owners.self, .primaryKey, .autoIncrement)
        static let name = Column<String>("name", of: Owners.self, .unique)
        static let columns: [any AnyColumn] = [id, name]
    }

    enum Accounts: TableSchema {
        static let tableName = "accounts"
        static let id = Column<Int64>("id", of: Accounts.self, .primaryKey, .autoIncrement)
        static let ownerID = Column<Int64>("owner_id", of: Accounts.self, .references(Owners.id, onDelete: .cascade))
        static let balance = Column<Int64>("balance", of: Accounts.self, .default(0))
        static let opened = Column<Date?>("opened", of: Accounts.self)
        static let columns: [any AnyColumn] = [id, ownerID, balance, opened]
        static let indexes = [Index(on: ownerID)]
    }
}

extension Readme {
    final class Owner: Model {
        typealias Schema = Owners
        var id: Int64?
        var name: String
        var accounts: Related<[Account]> = .notLoaded         // loaded, or not: reading it never queries
        static let accounts = ToMany(\Owner.accounts, key: Owners.id, children: Accounts.ownerID, cascade: .all)
        static var relationships: [any Relationship<Owner>] { [accounts] }

        // Only accounts given are loaded: an owner read from a row keeps .notLoaded (not "loaded, none").
        init(name: String, accounts: [Account]? = nil) { self.name = name; if let accounts { self.accounts = .loaded(accounts) } }
        convenience init(row: Row) throws { self.init(name: ""); try update(from: row) }
        func update(from row: Row) throws { id = try row.decode(Owners.id.name); name = try row.decode(Owners.name.name) }
        func encode(to values: inout ColumnValues) { values[Owners.id] = id; values[Owners.name] = name }
    }

    /// The README's account model is only a table there; a minimal model of it here.
    final class Account: Model {
        typealias Schema = Accounts
        var id: Int64?
        var ownerID: Int64 = 0
        var balance: Int64
        init(balance: Int64) { self.balance = balance }
        init(row: Row) throws {
            id = try row.decode(Accounts.id.name)
            ownerID = try row.decode(Accounts.ownerID.name)
            balance = try row.decode(Accounts.balance.name)
        }
        func update(from row: Row) throws {
            id = try row.decode(Accounts.id.name)
            ownerID = try row.decode(Accounts.ownerID.name)
            balance = try row.decode(Accounts.balance.name)
        }
        func encode(to values: inout ColumnValues) {
            values[Accounts.id] = id
            values[Accounts.ownerID] = ownerID
            values[Accounts.balance] = balance
        }
    }
}

@Suite("README examples", .limit(minutes: 1))
struct ReadmeExampleTests {
    @Test("the Core examples run as written", arguments: TestBackend.selected, TestDatabase.allCases)
    func coreExamples(_ backend: TestBackend, _ database: TestDatabase) async throws {
        typealias Owners = Readme.Owners
        typealias Accounts = Readme.Accounts
        try await database.withPrivateConnection(backend) { connection in
            // --- the SQLite example
            try await Metadata(Owners.self, Accounts.self).createAll(on: connection)
            let ada = try await connection.execute(
                insert(into: Owners.self).values(Owners.name.set("Ada")).returning(Owners.id)
            ).scalar(Int64.self)
            try await connection.execute(
                insert(into: Accounts.self).values(Accounts.ownerID.set(ada ?? 0), Accounts.balance.set(100), Accounts.opened.set(Date())))

            struct Holding: Decodable { let name: String; let balance: Int64 }
            let holdings = try await connection.execute(
                select(Owners.name, Accounts.balance).from(Accounts.self)
                    .join(Owners.self, on: Owners.id == Accounts.ownerID)
                    .where(Accounts.balance > 50 && Owners.name.like("A%"))
                    .orderBy(Accounts.balance.desc()).limit(10)
            ).decode(Holding.self)
            #expect(holdings.map(\.name) == ["Ada"] && holdings.map(\.balance) == [100])

            // --- the PostgreSQL example (on one connection: `engine.begin` would take another)
            let transfer = try update(Accounts.self)
                .set(Accounts.balance.set(Accounts.balance + Parameter<Int64>("amount")))
                .where(Accounts.id == Parameter<Int64>("account"))
                .compiled()
            try await connection.withTransaction { connection in
                try await connection.execute(transfer, parameters: ["amount": -25, "account": 1])
                try await connection.execute(transfer, parameters: ["amount": 25, "account": 2])
            }
            try await connection.executeMany(
                insert(into: Owners.self).values(Owners.name.set(Parameter<String>("name"))),
                parameterSets: ["Grace", "Edsger"].map { ["name": $0] })
            let total = try await connection.stream(select(Accounts.balance).from(Accounts.self)) { rows in
                var total: Int64 = 0
                for try await row in rows { total += try row.decode(0, as: Int64.self) }
                return total
            }
            #expect(total == 75)
            #expect(try await connection.execute(select(count()).from(Owners.self)).scalar(Int.self) == 3)
            if database == .postgresql {
                let slept: QueryResult? = try await moveOnAfter(.milliseconds(50)) { _ in
                    try await connection.execute("SELECT pg_sleep(10)")
                }
                #expect(slept == nil)
            }
            try await Metadata(Owners.self, Accounts.self).dropAll(on: connection)
        }
    }

    @Test("the ORM example runs as written", arguments: TestBackend.selected, TestDatabase.allCases)
    func ormExample(_ backend: TestBackend, _ database: TestDatabase) async throws {
        typealias Owners = Readme.Owners
        typealias Owner = Readme.Owner
        try await database.withPrivateConnection(backend) { connection in
            try await Metadata(Owners.self, Readme.Accounts.self).createAll(on: connection)
            let session = Session(connection: connection)  // engine.withSession in the README; one connection here
            let grace = Owner(name: "Grace", accounts: [Readme.Account(balance: 100)])
            session.add(grace)
            try await session.flush()
            #expect(grace.accounts.value?.first?.ownerID == grace.id)
            grace.name = "Grace Hopper"
            let owners = try await session.scalars(
                select(Owner.self).where(Owners.name.like("G%")).orderBy(Owners.name.asc()).including(Owner.accounts))
            #expect(owners.map(\.name) == ["Grace Hopper"] && owners[0].accounts.value?.count == 1)
            try await session.commit()
            #expect(try await connection.execute("SELECT name FROM owners").scalar(String.self) == "Grace Hopper")
            try session.delete(grace)
            try await session.commit()
            #expect(try await connection.execute(select(count()).from(Readme.Accounts.self)).scalar(Int.self) == 0)
            try await Metadata(Owners.self, Readme.Accounts.self).dropAll(on: connection)
        }
    }
}
