import FoundationEssentials
import Runtime
import SQLAsync
import TestSupport
import Testing

struct Account: Decodable, Equatable {
    enum Tier: String, Decodable { case basic, gold }
    let id: Int
    let name: String
    let email: String?
    let balance: Int64
    let rate: Double
    let active: Bool
    let tier: Tier
    let token: UUID
}

@Suite("Decodable rows", .limit(minutes: 1))
struct DecodableRowTests {
    @Test("rows decode into Decodable types by column name", arguments: TestBackend.selected, TestDatabase.allCases)
    func decodeStructs(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        let token = UUID()
        try await backend.run {
            try await engine.withConnection { connection in
                let rows = try await connection.execute(
                    """
                    SELECT \(1) AS id, \("Ada") AS name, \(String?.none) AS email, \(Int64.max) AS balance,
                           \(0.25) AS rate, \(true) AS active, \("gold") AS tier, \(token.uuidString) AS token
                    """)
                let accounts = try rows.decode(Account.self)
                #expect(accounts == [
                    Account(id: 1, name: "Ada", email: nil, balance: .max, rate: 0.25, active: true, tier: .gold, token: token)
                ])
            }
        }
    }

    @Test("a missing column, a NULL or a bad value is a decoding error naming the column",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func decodeErrors(_ backend: TestBackend, _ database: TestDatabase) async throws {
        struct Person: Decodable { let id: Int; let name: String }
        struct Tagged: Decodable { let tier: Account.Tier }
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let missing = try await connection.execute("SELECT \(1) AS id").one()
                #expect(throws: SQLError.self) { try missing.decode(Person.self) }
                let null = try await connection.execute("SELECT \(1) AS id, \(String?.none) AS name").one()
                do {
                    _ = try null.decode(Person.self)
                    Issue.record("NULL decoded into String")
                } catch let error as SQLError {
                    #expect(error.kind == .decoding && error.message.contains("'name'"))
                }
                let badEnum = try await connection.execute("SELECT \("platinum") AS tier").one()
                #expect(throws: (any Error).self) { try badEnum.decode(Tagged.self) }
            }
        }
    }
}
