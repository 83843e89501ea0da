import Runtime
import SQLAsync
import TestSupport
import Testing

/// "Cancelled means it did not happen", at its simplest: a statement is never sent from code that is
/// cancelled already.
@Suite("Cancelled before anything is sent", .limit(minutes: 1))
struct CancelledBeforeSendTests {
    @Test("an autocommit write, a stream and a transaction in a cancelled scope throw CancellationError and change nothing",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func nothingIsSent(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let table = SQL.identifier("unsent_\(UInt32.random(in: 0...UInt32.max))")
                try await connection.execute("CREATE TABLE \(table) (id INTEGER PRIMARY KEY)")
                var outcomes: [String] = []
                for (name, operation) in [
                    ("insert", { _ = try await connection.execute("INSERT INTO \(table) (id) VALUES (\(1))") }),
                    ("stream", {
                        _ = try await connection.stream("INSERT INTO \(table) (id) VALUES (\(2)) RETURNING id") { rows in
                            for try await _ in rows {}
                        }
                    }),
                    ("transaction", {
                        try await connection.withTransaction { _ in
                            _ = try await connection.execute("INSERT INTO \(table) (id) VALUES (\(3))")
                        }
                    }),
                ] as [(String, () async throws -> Void)] {
                    do {
                        _ = try await withCancelScope { scope in
                            scope.cancel()
                            try await operation()
                            outcomes.append("\(name): returned")
                        }
                    } catch {
                        outcomes.append("\(name): threw \(error)")
                    }
                }
                #expect(outcomes.isEmpty, "\(outcomes)")  // each was cancelled, and its scope caught it
                let rows = try await connection.execute("SELECT count(*) FROM \(table)").scalar(Int.self)
                #expect(rows == 0, "a statement from a cancelled scope changed the table")
                #expect(!connection.isInTransaction)
                try await connection.execute("DROP TABLE \(table)")
            }
            await engine.dispose()
        }
    }
}
