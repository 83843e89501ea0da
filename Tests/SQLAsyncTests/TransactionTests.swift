import Runtime
import SQLAsync
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Transactions", .limit(minutes: 1))
struct TransactionTests {
    /// Creates a table, runs `body`, drops the table.
    func withTable(
        _ database: TestDatabase, _ connection: Connection, _ body: (SQL) async throws -> Void
    ) async throws {
        let table = SQL.identifier(database.table("ledger"))
        _ = try await connection.execute("CREATE TABLE \(table) (id INTEGER PRIMARY KEY, amount INTEGER NOT NULL)")
        try await body(table)
        _ = try await connection.execute("DROP TABLE \(table)")
    }

    func count(_ table: SQL, _ connection: Connection) async throws -> Int {
        try await connection.execute("SELECT count(*) FROM \(table)").scalar(Int.self) ?? -1
    }

    @Test("a transaction whose statement failed never reports a commit, and rolls back cleanly (also with a full statement cache)",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func failedStatementInside(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                try await withTable(database, connection) { table in
                    // More distinct statements than the PostgreSQL cache holds: evictions are pending.
                    for index in 0..<140 { _ = try await connection.execute("SELECT \(unsafeRaw: String(index)) AS n") }
                    do {
                        try await connection.withTransaction { connection in
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(1), \(10))")
                            // A failing statement whose error the body swallows.
                            _ = try? await connection.execute("INSERT INTO \(table) VALUES (\(1), \(20))")
                            _ = try? await connection.execute("SELECT CAST(\("secret-abc") AS BIGINT)")
                        }
                        // SQLite keeps the transaction going after a failed statement: the first row commits.
                        #expect(database == .sqlite, "PostgreSQL reported a commit of an aborted transaction")
                    } catch let error as SQLError {
                        #expect(database == .postgresql, "\(error)")
                        #expect(error.message.contains("cannot commit"))
                    }
                    #expect(!connection.isBroken && !connection.isInTransaction)
                    #expect(try await count(table, connection) == (database == .sqlite ? 1 : 0))
                }
            }
            // The value in a data error is not echoed.
            try await engine.withConnection { connection in
                do {
                    _ = try await connection.execute("SELECT CAST(\("secret-abc") AS BIGINT) AS n")
                    if database == .postgresql { Issue.record("PostgreSQL cast text to bigint") }
                } catch let error as SQLError {
                    #expect(!error.description.contains("secret-abc"), "\(error.description)")
                }
            }
            await engine.dispose()
        }
    }

    @Test("a SQLite connection given back inside a raw BEGIN is not reused inside it",
          arguments: TestBackend.selected)
    func rawBeginOnPooledSQLite(_ backend: TestBackend) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 1
        configuration.overflow = 0
        try await PoolDatabase.sqliteFile.withEngine(configuration) { engine in
            try await backend.run {
                try await engine.withConnection { connection in
                    _ = try await connection.execute("CREATE TABLE t (n INTEGER)")
                    _ = try await connection.execute("BEGIN")
                    _ = try await connection.execute("INSERT INTO t VALUES (\(1))")
                }
                try await engine.withConnection { connection in
                    // A fresh connection: the raw transaction died with the old one, and so did its row.
                    _ = try await connection.execute("BEGIN")
                    _ = try await connection.execute("ROLLBACK")
                    #expect(try await connection.execute("SELECT count(*) FROM t").scalar(Int.self) == 0)
                }
                await engine.dispose()
            }
        }
    }

    @Test("explicit begin / commit / rollback, savepoints among them, and engine.begin",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func explicitTransactions(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            let table = SQL.identifier(database.table("explicit"))
            try await engine.begin { connection in
                _ = try await connection.execute("CREATE TABLE \(table) (id INTEGER PRIMARY KEY)")
            }
            try await engine.withConnection { connection in
                let outer = try await connection.begin()
                #expect(connection.isInTransaction && !outer.isSavepoint)
                _ = try await connection.execute("INSERT INTO \(table) VALUES (\(1))")
                let inner = try await connection.begin()
                #expect(inner.isSavepoint)
                _ = try await connection.execute("INSERT INTO \(table) VALUES (\(2))")
                try await inner.rollback()
                try await outer.commit()
                #expect(!connection.isInTransaction)
                await #expect { try await outer.commit() } throws: { ($0 as? SQLError)?.kind == .misuse }
                #expect(try await count(table, connection) == 1)

                let discarded = try await connection.begin(isolationLevel: .serializable)
                _ = try await connection.execute("INSERT INTO \(table) VALUES (\(3))")
                try await discarded.rollback()
                #expect(try await count(table, connection) == 1)
            }
            // engine.begin rolls back on error.
            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await engine.begin { connection in
                    _ = try await connection.execute("INSERT INTO \(table) VALUES (\(4))")
                    throw Abort()
                }
            }
            let remaining = try await engine.begin(readOnly: true) { connection in try await count(table, connection) }
            #expect(remaining == 1)
            try await engine.withConnection { connection in _ = try await connection.execute("DROP TABLE \(table)") }
            await engine.dispose()
        }
    }

    @Test("commit on success; rollback on a thrown error", arguments: TestBackend.selected, TestDatabase.allCases)
    func commitAndRollback(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                try await withTable(database, connection) { table in
                    try await connection.withTransaction { connection in
                        _ = try await connection.execute("INSERT INTO \(table) VALUES (\(1), \(10))")
                    }
                    #expect(try await count(table, connection) == 1)
                    struct Abort: Error {}
                    await #expect(throws: Abort.self) {
                        try await connection.withTransaction { connection in
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(2), \(20))")
                            throw Abort()
                        }
                    }
                    #expect(try await count(table, connection) == 1)
                    #expect(!connection.isInTransaction)
                    // A failing statement inside rolls back too (PostgreSQL aborts the transaction).
                    await #expect(throws: SQLError.self) {
                        try await connection.withTransaction { connection in
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(3), \(30))")
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(3), \(31))")
                        }
                    }
                    #expect(try await count(table, connection) == 1)
                }
            }
        }
    }

    @Test("a cancelled transaction is rolled back and the connection stays usable",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func rollbackOnCancellation(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                try await withTable(database, connection) { table in
                    let result: Void? = try await withCancelScope { scope in
                        try await connection.withTransaction { connection in
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(1), \(10))")
                            scope.cancel()
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(2), \(20))")
                        }
                    }
                    #expect(result == nil)
                    #expect(!connection.isInTransaction && !connection.isBroken)
                    #expect(try await count(table, connection) == 0)
                }
            }
        }
    }

    @Test("nested transactions are savepoints: an inner failure undoes only the inner work",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func savepoints(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                try await withTable(database, connection) { table in
                    struct Inner: Error {}
                    try await connection.withTransaction { connection in
                        _ = try await connection.execute("INSERT INTO \(table) VALUES (\(1), \(10))")
                        do {
                            try await connection.withTransaction { connection in
                                _ = try await connection.execute("INSERT INTO \(table) VALUES (\(2), \(20))")
                                throw Inner()
                            }
                        } catch is Inner {}
                        try await connection.withTransaction { connection in
                            _ = try await connection.execute("INSERT INTO \(table) VALUES (\(3), \(30))")
                        }
                    }
                    let ids = try await connection.execute("SELECT id FROM \(table) ORDER BY id").scalars(Int.self)
                    #expect(ids == [1, 3])
                }
            }
        }
    }

    @Test("isolation level and read-only on PostgreSQL", arguments: TestBackend.selected)
    func postgresOptions(_ backend: TestBackend) async throws {
        let engine = try TestDatabase.postgresql.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let level = try await connection.withTransaction(isolationLevel: .serializable) { connection in
                    try await connection.execute("SHOW transaction_isolation").scalar(String.self)
                }
                #expect(level == "serializable")
                do {
                    try await connection.withTransaction(readOnly: true) { connection in
                        _ = try await connection.execute("CREATE TEMP TABLE t_ro (x int)")
                    }
                    Issue.record("a write succeeded in a read-only transaction")
                } catch let error as SQLError {
                    #expect(error.sqlState == "25006")
                }
            }
        }
    }

    @Test("read-only on SQLite refuses writes", arguments: TestBackend.selected)
    func sqliteReadOnly(_ backend: TestBackend) async throws {
        let engine = try TestDatabase.sqlite.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                _ = try await connection.execute("CREATE TABLE t (x INTEGER)")
                await #expect(throws: SQLError.self) {
                    try await connection.withTransaction(readOnly: true) { connection in
                        _ = try await connection.execute("INSERT INTO t VALUES (\(1))")
                    }
                }
                _ = try await connection.execute("INSERT INTO t VALUES (\(2))")  // writable again afterwards
                #expect(try await connection.execute("SELECT count(*) FROM t").scalar(Int.self) == 1)
            }
        }
    }
}

@Suite("Transactions, the database's word", .limit(minutes: 1))
struct RawTransactionTests {
    @Test("isInTransaction follows raw BEGIN / COMMIT; a managed transaction inside a raw one is a typed error",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func rawBegin(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                #expect(!connection.isInTransaction)
                try await connection.execute("BEGIN")
                #expect(connection.isInTransaction, "a raw BEGIN is not seen")
                await #expect {
                    try await connection.withTransaction { _ in }
                } throws: { ($0 as? SQLError)?.kind == .misuse }
                #expect(connection.isInTransaction, "the refused transaction ended the raw one")
                try await connection.execute("COMMIT")
                #expect(!connection.isInTransaction, "a raw COMMIT is not seen")
                // Managed transactions still work, and nest as savepoints.
                try await connection.withTransaction { connection in
                    #expect(connection.isInTransaction)
                    try await connection.withTransaction { _ in #expect(connection.isInTransaction) }
                }
                #expect(!connection.isInTransaction)
            }
            await engine.dispose()
        }
    }
}
