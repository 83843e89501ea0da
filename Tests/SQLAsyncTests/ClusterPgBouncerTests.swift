import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// A pgbouncer in transaction mode of the test's own with two server connections, shared by sixteen clients:
/// the driver finds the pooler and sends its statements unnamed, so that prepared statements, transactions,
/// batches, streams and COPY all work whichever server connection a transaction lands on. (The whole SQL
/// suite also runs through pgbouncer in `scripts/test.sh`.)
@Suite("pgbouncer in transaction mode", .serialized, .limit(minutes: 3))
struct ClusterPgBouncerTests {
    @Test("the pooler is found; 16 clients on 2 server connections run every kind of call without an error",
          arguments: TestBackend.selected)
    func pooled(_ backend: TestBackend) async throws {
        try await backend.run {
            let bouncer = try await Runtime.runBlocking { try PgBouncer(poolSize: 2) }
            do {
                try await Self.run(bouncer)
            } catch {
                try? await Runtime.runBlocking { bouncer.finish() }
                throw error
            }
            try await Runtime.runBlocking { bouncer.finish() }
        }
    }

    static func unnamed(_ engine: Engine) async throws -> Bool? {
        try await engine.withConnection { connection in
            (connection.driver as? PostgresConnection)?.statements.withLock { $0.unnamed }
        }
    }

    static func run(_ bouncer: PgBouncer) async throws {
        var pool = PoolConfiguration.patient
        pool.size = 16
        pool.overflow = 0
        let engine = try Engine(bouncer.url, pool: pool, logger: quietLogger)
        let direct = try Engine(bouncer.directURL, logger: quietLogger)
        #expect(try await unnamed(engine) == true, "through pgbouncer, statements go unnamed")
        #expect(try await unnamed(direct) == false, "directly, they are prepared by name")
        var forced = PoolConfiguration.patient
        forced.preparedStatements = .unnamed
        let unnamedDirect = try Engine(bouncer.directURL, pool: forced, logger: quietLogger)
        #expect(try await unnamed(unnamedDirect) == true)

        let name = "bounced_\(UInt32.random(in: 0...UInt32.max))"
        let table = SQL.identifier(name)
        try await engine.withConnection { try await $0.execute("CREATE TABLE \(table) (id bigint PRIMARY KEY, name text NOT NULL, score int4 NOT NULL)") }
        let failures = Locked<[String]>([])
        try await Runtime.withTaskGroup { group in
            for client in 0..<16 {
                try group.startSoon {
                    do {
                        for round in 0..<20 {
                            let id = Int64(client * 1_000 + round)
                            try await engine.withConnection { connection in
                                // The same statements on every client: a named one would exist on one server
                                // connection only.
                                try await connection.execute("INSERT INTO \(table) (id, name, score) VALUES (\(id), \("c\(client)"), \(Int32(round)))")
                                let row = try await connection.execute("SELECT name, score FROM \(table) WHERE id = \(id)").one()
                                guard try row.decode(0, as: String.self) == "c\(client)", try row.decode(1, as: Int.self) == round else {
                                    throw SQLError(.database, "client \(client) read back another row")
                                }
                                try await connection.withTransaction { connection in
                                    try await connection.execute("UPDATE \(table) SET score = score + \(1) WHERE id = \(id)")
                                    try await connection.execute("UPDATE \(table) SET score = score - \(1) WHERE id = \(id)")
                                }
                                let total = try await connection.stream("SELECT score FROM generate_series(1, 50) AS score", batchSize: 7) { rows in
                                    var total = 0
                                    for try await row in rows { total += try row.decode(0, as: Int.self) }
                                    return total
                                }
                                guard total == 1_275 else { throw SQLError(.database, "a stream summed \(total)") }
                            }
                        }
                    } catch {
                        failures.withLock { $0.append("client \(client): \(error)") }
                    }
                }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0.prefix(3) })")
        try await engine.withConnection { connection in
            #expect(try await connection.execute("SELECT count(*) FROM \(table)").scalar(Int.self) == 320)
            // A batch, all or nothing, and a COPY.
            let sets: [[SQLValue]] = (0..<100).map { [.integer(Int64(100_000 + $0)), .text("batch"), .integer(Int64($0))] }
            _ = try await connection.executeMany(text: "INSERT INTO \(name) (id, name, score) VALUES ($1, $2, $3)", sets: sets)
            let rows = (0..<1_000).lazy.map { [SQLValue.integer(Int64(200_000 + $0)), .text("copied"), .integer(Int64($0))] }
            #expect(try await connection.copy(rows, into: name, columns: ["id", "name", "score"]) == 1_000)
            #expect(try await connection.execute("SELECT count(*) FROM \(table)").scalar(Int.self) == 1_420)
            // The described parameter types are kept per statement: an integer the column cannot hold is
            // refused before it is sent, as on a direct connection.
            await #expect { try await connection.execute("SELECT count(*) FROM \(table) WHERE score = \(Int64(Int32.max) + 1)") } throws: {
                ($0 as? SQLError)?.kind == .invalidParameter
            }
            try await connection.execute("DROP TABLE \(table)")
        }
        for engine in [engine, direct, unnamedDirect] { await engine.dispose() }
    }
}
