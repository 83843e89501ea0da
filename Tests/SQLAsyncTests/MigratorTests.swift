import Runtime
import SQLAsync
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Migrations", .limit(minutes: 2))
struct MigratorTests {
    static func base() -> Migrator {
        var migrator = Migrator()
        migrator.register("create items") { connection in
            try await connection.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        }
        migrator.register("seed", sql: "INSERT INTO items (id, name) VALUES (1, 'a'); INSERT INTO items (id, name) VALUES (2, 'b')")
        migrator.register("add note", sql: "ALTER TABLE items ADD COLUMN note TEXT")
        return migrator
    }

    static func count(_ connection: Connection, _ sql: SQL) async throws -> Int {
        try await connection.execute(sql).scalar(Int.self) ?? -1
    }

    @Test("applied once each, in order, up to a target; a failing one rolled back and unrecorded; a history that differs refused before anything runs",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func lifecycle(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            var migrator = Self.base()
            #expect(try await migrator.migrate(on: connection, upTo: "seed") == ["create items", "seed"])
            #expect(try await migrator.appliedMigrations(on: connection) == ["create items", "seed"])
            #expect(try await migrator.isComplete(on: connection) == false)
            #expect(try await migrator.migrate(on: connection) == ["add note"])
            #expect(try await migrator.migrate(on: connection) == [])
            #expect(try await migrator.isComplete(on: connection))
            #expect(try await Self.count(connection, "SELECT count(*) FROM items") == 2)

            // A migration that fails half-way: its first statement is undone, and it is not recorded.
            migrator.register("broken", sql: "INSERT INTO items (id, name) VALUES (3, 'c'); INSERT INTO nowhere VALUES (1)")
            await #expect(throws: SQLError.self) { try await migrator.migrate(on: connection) }
            #expect(try await Self.count(connection, "SELECT count(*) FROM items") == 2)
            #expect(try await migrator.appliedMigrations(on: connection) == ["create items", "seed", "add note"])
            #expect(!connection.isInTransaction && !connection.isBroken)

            // Another history: refused before anything runs.
            var other = Migrator()
            other.register("create items") { _ in }
            other.register("create others", sql: "CREATE TABLE others (id INTEGER)")
            await #expect(throws: MigrationError.self) { try await other.migrate(on: connection) }
            #expect(try await Self.count(connection, "SELECT count(*) FROM items WHERE id = 1") == 1)
            do {
                _ = try await connection.execute("SELECT count(*) FROM others")
                Issue.record("a migration ran although the history differed")
            } catch let error as SQLError {
                #expect(error.kind == .database || error.kind == .syntax, "\(error)")
            }
            // Code older than the database: refused too.
            var older = Migrator()
            older.register("create items") { _ in }
            await #expect(throws: MigrationError.self) { try await older.migrate(on: connection) }
            await #expect(throws: MigrationError.self) { try await older.isComplete(on: connection) }
            // Mistakes in the registration itself.
            var twice = Self.base()
            twice.register("seed", sql: "SELECT 1")
            await #expect(throws: MigrationError.self) { try await twice.migrate(on: connection) }
            await #expect(throws: MigrationError.self) { try await Self.base().migrate(on: connection, upTo: "nothing") }
        }
    }

    @Test("SQL files of a directory, in the order of their names", arguments: TestBackend.selected, TestDatabase.allCases)
    func sqlFiles(_ backend: TestBackend, _ database: TestDatabase) async throws {
        var template = Array("/tmp/anyruntime-migrations-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { $0.baseAddress.flatMap { mkdtemp($0) } }
        let directory = try #require(made.map { String(cString: $0) })
        defer {
            for name in ["001_create.sql", "002_fill.sql", "notes.txt"] { unlink(directory + "/" + name) }
            rmdir(directory)
        }
        for (name, text) in [("002_fill.sql", "INSERT INTO files (id) VALUES (7);\n"), ("001_create.sql", "CREATE TABLE files (id INTEGER);\n"), ("notes.txt", "not a migration")] {
            let file = try #require(fopen(directory + "/" + name, "w"))
            fputs(text, file)
            fclose(file)
        }
        var migrator = Migrator(tableName: "schema_history")
        try migrator.registerSQLFiles(in: directory)
        #expect(migrator.identifiers == ["001_create.sql", "002_fill.sql"])
        #expect(throws: MigrationError.self) { var other = Migrator(); try other.registerSQLFiles(in: directory + "/missing") }
        let migrations = migrator
        try await database.withPrivateConnection(backend) { (connection: Connection) async throws in
            #expect(try await migrations.migrate(on: connection) == ["001_create.sql", "002_fill.sql"])
            #expect(try await Self.count(connection, "SELECT count(*) FROM files WHERE id = 7") == 1)
            #expect(try await Self.count(connection, "SELECT count(*) FROM schema_history") == 2)
        }
    }

    @Test("on SQLite a migrator waits for another's write lock past the 5 s busy timeout, and then migrates",
          arguments: TestBackend.selected)
    func waitsPastBusyTimeout(_ backend: TestBackend) async throws {
        let migrations = Self.base()
        try await PoolDatabase.sqliteFile.withEngine(.patient) { engine in
            try await backend.run {
                // Another writer holds SQLite's write lock for 6 s (real time, on a thread: virtual time too),
                // longer than the busy timeout of the migrator's BEGIN IMMEDIATE.
                let holder = try await engine.connect()
                try await holder.execute("BEGIN IMMEDIATE")
                let applied = Locked<[String]>([])
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        let mine = try await migrations.migrate(engine)
                        applied.withLock { $0 = mine }
                    }
                    _ = try await Runtime.runBlocking { usleep(6_000_000) }
                    try await holder.execute("COMMIT")
                    await holder.close()
                }
                #expect(applied.withLock { $0 } == migrations.identifiers)
                let complete = try await engine.withConnection { connection in try await migrations.isComplete(on: connection) }
                #expect(complete)
                await engine.dispose()
            }
        }
    }

    @Test("four migrators at once on one database apply each migration once", arguments: TestBackend.selected, PoolDatabase.allCases)
    func concurrent(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        let suffix = "\(backend)_\(UInt32.random(in: 0...UInt32.max))"
        var migrator = Migrator(tableName: "history_\(suffix)")
        for step in 0..<5 {
            migrator.register("step \(step)", sql: step == 0
                ? "CREATE TABLE runs_\(suffix) (step INTEGER)" : "INSERT INTO runs_\(suffix) (step) VALUES (\(step))")
        }
        let migrations = migrator
        try await database.withEngine(.patient) { engine in
            try await backend.run {
                // Four connections opened first: what runs at once below is the migrators, not four SQLite
                // connections opening (each sets WAL mode at open, and on a loaded machine a PRAGMA waiting
                // behind another migrator's write transaction outlasted SQLite's 5 s busy timeout).
                let warm = try await (0..<4).asyncMap { _ in try await engine.connect() }
                for connection in warm { await connection.close() }
                let applied = Locked<[String]>([])
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<4 {
                        try group.startSoon {
                            let mine = try await migrations.migrate(engine)
                            applied.withLock { $0 += mine }
                        }
                    }
                }
                #expect(applied.withLock { $0 }.sorted() == migrations.identifiers.sorted())
                try await engine.withConnection { connection in
                    #expect(try await Self.count(connection, .unsafeRaw("SELECT count(*) FROM runs_\(suffix)")) == 4)
                    #expect(try await migrations.isComplete(on: connection))
                    try await connection.execute(.unsafeRaw("DROP TABLE runs_\(suffix)"))
                    try await connection.execute(.unsafeRaw("DROP TABLE history_\(suffix)"))
                }
                await engine.dispose()
            }
        }
    }
}
