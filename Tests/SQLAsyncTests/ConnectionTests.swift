import Logging
import Runtime
import SQLAsync
import TestSupport
import Testing

/// Engines in tests log warnings only (the logging test has its own).
let quietLogger: Logger = {
    var logger = Logger(label: "tests")
    logger.logLevel = .warning
    return logger
}()

extension PoolConfiguration {
    /// The tests' pool settings: a cancellation grace of 5 s instead of 1 s. Tests that check what a
    /// cancellation leaves behind on a healthy server want the connection cleaned, not given up; under the
    /// parallel suite a cancel request's answer was measured taking up to 1.2 s. (Given up would also keep the
    /// promise; the fault suite checks the grace itself, with short ones.)
    static var patient: PoolConfiguration {
        var configuration = PoolConfiguration()
        configuration.cancellationGrace = .seconds(5)
        // Under a sanitizer the whole process runs several times slower, and a connect beside the suite's
        // load once took more than the default 10 s (ThreadSanitizer, the COMMIT tests).
        if TestBuild.isSanitized { configuration.connectTimeout = .seconds(60) }
        return configuration
    }
}

/// The databases every SQL test runs on.
enum TestDatabase: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite, postgresql
    var description: String { rawValue }

    /// A fresh engine: a private in-memory SQLite database, or the test PostgreSQL server.
    func engine(logger: Logger = quietLogger, pool: PoolConfiguration = .patient) throws -> Engine {
        switch self {
        case .sqlite: try Engine("sqlite::memory:", pool: pool, logger: logger)
        case .postgresql: Engine(url: try postgresURL(), pool: pool, logger: logger)
        }
    }

    /// A table name unique to one test run, so that parallel runs on one server do not collide.
    func table(_ base: String) -> String { "\(base)_\(UInt32.random(in: 0...UInt32.max))" }

    /// Runs `body` on `backend` with one connection in a namespace of its own: a fresh PostgreSQL schema
    /// (parallel runs share the server), dropped afterwards whatever happens, or a private in-memory SQLite
    /// database. Through a pooler in transaction mode a schema on the search path would not follow the
    /// connection from one transaction to the next (a `SET` holds for one server session only): there the
    /// namespace is a fresh database instead, made and dropped on the server directly.
    func withPrivateConnection(
        _ backend: TestBackend, logger: Logger = quietLogger, _ body: @escaping (Connection) async throws -> Void
    ) async throws {
        if self == .postgresql, TestPostgres.isPooled { return try await withPrivateDatabase(backend, logger: logger, body) }
        let engine = try engine(logger: logger)
        try await backend.run {
            try await engine.withConnection { connection in
                let schema = SQL.identifier(table("private"))
                guard self == .postgresql else { return try await body(connection) }
                try await connection.execute("CREATE SCHEMA \(schema)")
                try await connection.execute("SET search_path TO \(schema)")
                do {
                    try await body(connection)
                } catch {
                    _ = try? await withCancelScope(shield: true) { _ in try await connection.execute("DROP SCHEMA \(schema) CASCADE") }
                    throw error
                }
                try await connection.execute("DROP SCHEMA \(schema) CASCADE")
            }
            await engine.dispose()
        }
    }
}

extension TestDatabase {
    /// `withPrivateConnection` through a pooler: a database of the test's own, reached through the pooler
    /// (which opens a pool for it), dropped afterwards — `WITH (FORCE)`, since the pooler keeps its server
    /// connections open.
    private func withPrivateDatabase(
        _ backend: TestBackend, logger: Logger, _ body: @escaping (Connection) async throws -> Void
    ) async throws {
        let name = table("private")
        let admin = Engine(url: try postgresURL(direct: true), pool: .patient, logger: logger)
        let engine = Engine(url: try DatabaseURL(try postgresURLString(database: name)), pool: .patient, logger: logger)
        try await backend.run {
            try await admin.withConnection { try await $0.execute("CREATE DATABASE \(SQL.identifier(name))") }
            do {
                try await engine.withConnection { try await body($0) }
            } catch {
                await engine.dispose()
                _ = try? await withCancelScope(shield: true) { _ in
                    try await admin.withConnection { try await $0.execute("DROP DATABASE \(SQL.identifier(name)) WITH (FORCE)") }
                }
                await admin.dispose()
                throw error
            }
            await engine.dispose()
            try await admin.withConnection { try await $0.execute("DROP DATABASE \(SQL.identifier(name)) WITH (FORCE)") }
            await admin.dispose()
        }
    }
}

@Suite("Connection and results", .limit(minutes: 1))
struct ConnectionTests {
    @Test("CRUD with bound values, and every result method", arguments: TestBackend.selected, TestDatabase.allCases)
    func crudAndResults(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let table = SQL.identifier(database.table("people"))
                _ = try await connection.execute(
                    "CREATE TABLE \(table) (id INTEGER PRIMARY KEY, name TEXT NOT NULL, age INTEGER, score DOUBLE PRECISION)")
                let tricky = "O'Brien; DROP TABLE \(table.description) --"
                for (id, name, age) in [(1, "Ada", 36), (2, tricky, 41), (3, "Émile ✓", Int?.none)] as [(Int, String, Int?)] {
                    let inserted = try await connection.execute(
                        "INSERT INTO \(table) (id, name, age, score) VALUES (\(id), \(name), \(age), \(Double(id) / 4))")
                    #expect(inserted.rowsAffected == 1)
                }
                let all = try await connection.execute("SELECT id, name, age, score FROM \(table) ORDER BY id")
                #expect(all.columns == ["id", "name", "age", "score"])
                #expect(all.count == 3)
                #expect(try all.scalars(Int.self) == [1, 2, 3])
                #expect(try all[1].decode("name", as: String.self) == tricky)  // stored as a value, not as SQL
                #expect(try all[2].decode("age", as: Int?.self) == nil)
                #expect(try all[0].decode(3, as: Double.self) == 0.25)
                #expect(all.mappings()[0]["name"] == .text("Ada"))
                #expect(try all.first()?.decode("id", as: Int.self) == 1)
                let one = try await connection.execute("SELECT name FROM \(table) WHERE id = \(1)").one()
                #expect(try one.decode(0, as: String.self) == "Ada")
                #expect(try await connection.execute("SELECT name FROM \(table) WHERE id = \(99)").oneOrNone() == nil)
                #expect { try all.one() } throws: { ($0 as? SQLError)?.kind == .multipleRows }
                #expect { try all.oneOrNone() } throws: { ($0 as? SQLError)?.kind == .multipleRows }
                await #expect { try await connection.execute("SELECT name FROM \(table) WHERE id = \(99)").one() } throws: {
                    ($0 as? SQLError)?.kind == .noRows
                }
                let count = try await connection.execute("SELECT count(*) FROM \(table) WHERE age > \(37)").scalar(Int.self)
                #expect(count == 1)
                let updated = try await connection.execute("UPDATE \(table) SET age = \(50) WHERE age IS NOT NULL")
                #expect(updated.rowsAffected == 2)
                let deleted = try await connection.execute("DELETE FROM \(table) WHERE id = \(3)")
                #expect(deleted.rowsAffected == 1)
                _ = try await connection.execute("DROP TABLE \(table)")
            }
        }
    }

    @Test("decoding errors name the column; integer widths are range-checked, never truncated",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func decoding(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let row = try await connection.execute(
                    "SELECT \(Int64(Int32.max) + 1) AS big, \(Optional<Int>.none) AS absent, \("text") AS word").one()
                #expect(try row.decode("big", as: Int64.self) == Int64(Int32.max) + 1)
                do {
                    _ = try row.decode("big", as: Int32.self)
                    Issue.record("an out-of-range Int32 decoded")
                } catch let error as SQLError {
                    #expect(error.kind == .decoding && error.message.contains("'big'"))
                }
                do {
                    _ = try row.decode("absent", as: Int.self)
                    Issue.record("NULL decoded into a non-optional")
                } catch let error as SQLError {
                    #expect(error.kind == .decoding && error.message.contains("'absent'") && error.message.contains("NULL"))
                }
                do {
                    _ = try row.decode("word", as: Int.self)
                    Issue.record("text decoded as Int")
                } catch let error as SQLError {
                    #expect(error.kind == .decoding && error.message.contains("'word'"))
                }
                #expect(throws: SQLError.self) { try row.decode("missing", as: Int.self) }
                for (value, type) in [(Int64(Int16.min), "Int16"), (Int64(Int8.max), "Int8")] {
                    let decoded = try await connection.execute("SELECT \(value)").one()
                    if type == "Int16" { #expect(try decoded.decode(0, as: Int16.self) == .min) }
                    if type == "Int8" { #expect(try decoded.decode(0, as: Int8.self) == .max) }
                }
            }
        }
    }

    @Test("a statement cancelled mid-flight leaves the connection usable", arguments: TestBackend.selected, TestDatabase.allCases)
    func cancellationMidQuery(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        let endless: SQL = database == .postgresql
            ? "SELECT pg_sleep(10)"
            : "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c WHERE x < 0"
        try await backend.run {
            try await engine.withConnection { connection in
                let canceller = BlockingThreadPool(maximumThreads: 1)
                let result: QueryResult? = try await withCancelScope { scope in
                    canceller.submit {
                        usleep(50_000)
                        scope.cancel()
                    }
                    return try await connection.execute(endless)
                }
                canceller.shutdown()
                #expect(result == nil)
                #expect(!connection.isBroken)
                #expect(try await connection.execute("SELECT \(42)").scalar(Int.self) == 42)
            }
        }
    }

    @Test("a bad URL is a typed error; the engine's description hides the password")
    func engineURL() throws {
        #expect(throws: SQLError.self) { try Engine("mysql://x") }
        let engine = try Engine("postgresql://app:topsecret@db.internal:5432/app")
        #expect(!engine.url.description.contains("topsecret"))
    }
}

#if canImport(Glibc)
import Glibc
#endif

@Suite("Scripts", .limit(minutes: 1))
struct ScriptTests {
    @Test("executeScript runs several statements; a failing one stops the script (PostgreSQL: nothing of it stays)",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func scripts(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let table = "script_\(UInt32.random(in: 0...UInt32.max))"
                try await connection.executeScript("""
                    CREATE TABLE \(table) (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
                    INSERT INTO \(table) (id, name) VALUES (1, 'one');
                    INSERT INTO \(table) (id, name) VALUES (2, 'two; with a semicolon');
                    """)
                let names = try await connection.execute("SELECT name FROM \(unsafeRaw: table) ORDER BY id").scalars(String.self)
                #expect(names == ["one", "two; with a semicolon"])
                await #expect {
                    try await connection.executeScript("""
                        INSERT INTO \(table) (id, name) VALUES (3, 'three');
                        INSERT INTO \(table) (id, name) VALUES (1, 'duplicate key');
                        INSERT INTO \(table) (id, name) VALUES (4, 'four');
                        """)
                } throws: { ($0 as? SQLError)?.kind == .constraint }
                let count = try await connection.execute("SELECT count(*) FROM \(unsafeRaw: table)").scalar(Int.self)
                // PostgreSQL runs the script in one implicit transaction; SQLite statement by statement, so the
                // statement before the failing one stays.
                #expect(count == (database == .postgresql ? 2 : 3))
                #expect(!connection.isInTransaction)
                try await connection.executeScript("DROP TABLE \(table)")
            }
            await engine.dispose()
        }
    }
}
