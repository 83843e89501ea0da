import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// Ordered, named schema migrations, recorded in a table of the database, applied once each, in order, on
/// both databases (GRDB's `DatabaseMigrator` is the model).
///
/// ```swift
/// var migrator = Migrator()
/// migrator.register("create users") { connection in
///     try await Metadata(Users.self).createAll(on: connection)
/// }
/// migrator.register("index names", sql: "CREATE INDEX users_name ON users (name)")
/// try migrator.registerSQLFiles(in: "Migrations")    // 001_accounts.sql, 002_… — by file name, in order
/// let applied = try await migrator.migrate(engine)   // the identifiers applied now
/// ```
///
/// Each migration runs in a transaction of its own, together with the row that records it: it takes effect
/// whole and is recorded, or not at all (PostgreSQL and SQLite both run DDL in a transaction; a migration
/// that cannot — `CREATE INDEX CONCURRENTLY` — is registered with `inTransaction: false`, and is then recorded
/// after it ran). Two processes migrating at once apply each migration once: every migration's transaction
/// first locks the record table (SQLite: `BEGIN IMMEDIATE`) and reads it again. A migrator waits for the
/// others as long as its caller lets it: on SQLite, a statement or transaction that outwaits the busy timeout
/// behind another migrator's transaction (it took no effect) is tried again, after a cancellation point.
///
/// The database's history must be a beginning of the registered list: a migration recorded there that is not
/// registered, or recorded in another order, stops ``migrate(_:upTo:)`` before anything runs, with a
/// ``MigrationError`` — the code and the database disagree about the schema, and guessing would be worse.
public struct Migrator: Sendable {
    /// One registered migration.
    struct Migration: Sendable {
        let identifier: String
        let inTransaction: Bool
        let run: @Sendable (Connection) async throws -> Void
    }

    /// The table the applied migrations are recorded in.
    public let tableName: String
    private(set) var migrations: [Migration] = []

    /// - Parameter tableName: where applied migrations are recorded (default `anyruntime_migrations`).
    public init(tableName: String = "anyruntime_migrations") {
        self.tableName = tableName
    }

    /// The identifiers of the registered migrations, in order.
    public var identifiers: [String] { migrations.map(\.identifier) }

    /// Registers a migration written in Swift.
    ///
    /// - Parameters:
    ///   - identifier: its name, unique among the migrations; recorded in the database.
    ///   - inTransaction: run it in a transaction with its record (default); `false` for statements that
    ///     cannot run in one.
    ///   - migrate: the work, on a connection of the engine.
    public mutating func register(
        _ identifier: String, inTransaction: Bool = true, _ migrate: @escaping @Sendable (Connection) async throws -> Void
    ) {
        migrations.append(Migration(identifier: identifier, inTransaction: inTransaction, run: migrate))
    }

    /// Registers a migration written in SQL: a script of one or more statements, run as
    /// ``Connection/executeScript(_:)`` runs it (no parameters: trusted text only).
    public mutating func register(_ identifier: String, inTransaction: Bool = true, sql: String) {
        register(identifier, inTransaction: inTransaction) { connection in try await connection.executeScript(sql) }
    }

    /// Registers every `.sql` file of `directory`, in the order of their names (`001_users.sql`,
    /// `002_index.sql`, …), each under its file name.
    ///
    /// - Throws: ``MigrationError`` when the directory cannot be read, or a file is not UTF-8.
    public mutating func registerSQLFiles(in directory: String) throws(MigrationError) {
        guard let handle = opendir(directory) else {
            throw MigrationError("cannot read the migrations directory '\(directory)' (\(String(cString: strerror(errno))))")
        }
        var names: [String] = []
        while let entry = readdir(handle) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name.hasSuffix(".sql") { names.append(name) }
        }
        closedir(handle)
        for name in names.sorted() {
            let path = directory + "/" + name
            guard let bytes = Self.read(path) else { throw MigrationError("cannot read the migration file '\(path)'") }
            guard let sql = String(validating: bytes, as: UTF8.self) else {
                throw MigrationError("the migration file '\(path)' is not UTF-8")
            }
            register(name, sql: sql)
        }
    }

    private static func read(_ path: String) -> [UInt8]? {
        guard let file = fopen(path, "rb") else { return nil }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = fread(&buffer, 1, buffer.count, file)
            if count > 0 { bytes.append(contentsOf: buffer[0..<count]) }
            if count < buffer.count { return ferror(file) == 0 ? bytes : nil }
        }
    }

    /// Applies the registered migrations the database has not recorded, in order, up to `target` (the last
    /// one by default). Returns the identifiers applied by this call.
    ///
    /// - Throws: ``MigrationError`` when identifiers repeat, `target` is not registered, or the database's
    ///   history is not a beginning of the registered list (nothing runs then); a migration's own error
    ///   (that migration is rolled back and not recorded; the ones before it stay applied);
    ///   `CancellationError`.
    @discardableResult
    public func migrate(_ engine: Engine, upTo target: String? = nil) async throws -> [String] {
        try await engine.withConnection { connection in try await migrate(on: connection, upTo: target) }
    }

    /// ``migrate(_:upTo:)`` on a connection of the caller's (outside any transaction of its own).
    @discardableResult
    public func migrate(on connection: Connection, upTo target: String? = nil) async throws -> [String] {
        var seen = Set<String>()
        for migration in migrations where !seen.insert(migration.identifier).inserted {
            throw MigrationError("the migration '\(migration.identifier)' is registered twice")
        }
        let count: Int
        if let target {
            guard let index = migrations.firstIndex(where: { $0.identifier == target }) else {
                throw MigrationError("no migration '\(target)' is registered")
            }
            count = index + 1
        } else {
            count = migrations.count
        }
        try await createTable(connection)
        try checkHistory(try await applied(connection))
        var done: [String] = []
        for migration in migrations.prefix(count) {
            if try await apply(migration, connection) { done.append(migration.identifier) }
        }
        return done
    }

    /// The identifiers the database has recorded as applied, in order.
    public func appliedMigrations(on connection: Connection) async throws -> [String] {
        try await createTable(connection)
        return try await applied(connection)
    }

    /// Whether every registered migration is applied.
    ///
    /// - Throws: ``MigrationError`` when the database's history is not a beginning of the registered list.
    public func isComplete(on connection: Connection) async throws -> Bool {
        let applied = try await appliedMigrations(on: connection)
        try checkHistory(applied)
        return applied.count == migrations.count
    }

    // MARK: The record table

    private var table: SQL { SQL.identifier(tableName) }

    private func createTable(_ connection: Connection) async throws {
        let create: SQL =
            "CREATE TABLE IF NOT EXISTS \(table) (position INTEGER PRIMARY KEY, identifier TEXT NOT NULL UNIQUE, applied_at TEXT NOT NULL)"
        guard connection.dialect == .postgresql else {
            try await waitingForTheWriteLock(connection) { _ = try await connection.execute(create) }
            return
        }
        // PostgreSQL: two creations at the same moment can both pass IF NOT EXISTS and collide in the catalog
        // (a duplicate type or key); a lock of the transaction, named after the table, makes them take turns.
        try await connection.withTransaction { connection in
            try await connection.execute("SELECT pg_advisory_xact_lock(\(lockKey))")
            try await connection.execute(create)
        }
    }

    /// The advisory lock key of the record table: FNV-1a of its name.
    private var lockKey: Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in ("anyruntime migrations " + tableName).utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return Int64(bitPattern: hash)
    }

    private func applied(_ connection: Connection) async throws -> [String] {
        try await connection.execute("SELECT identifier FROM \(table) ORDER BY position").scalars(String.self)
    }

    /// Refuses a history that is not a beginning of the registered list.
    private func checkHistory(_ applied: [String]) throws(MigrationError) {
        for (index, identifier) in applied.enumerated() {
            guard index < migrations.count else {
                throw MigrationError(
                    "the database records the migration '\(identifier)', which is not registered (the database is newer than this code?)")
            }
            guard migrations[index].identifier == identifier else {
                throw MigrationError(
                    "the database records '\(identifier)' as migration \(index + 1), where '\(migrations[index].identifier)' is registered")
            }
        }
    }

    /// Applies `migration` unless it is recorded already (by another process meanwhile); returns whether it
    /// ran.
    private func apply(_ migration: Migration, _ connection: Connection) async throws -> Bool {
        guard migration.inTransaction else { return try await runUnlessRecorded(migration, connection) }
        return try await waitingForTheWriteLock(connection) { try await applyInTransaction(migration, connection) }
    }

    /// Runs `operation` again while SQLite reports its busy timeout: another writer (another migrator's long
    /// migration, say) held the write lock throughout, and what met it took no effect — a statement that
    /// could not start, or a transaction rolled back whole. The caller's cancellation ends the waiting.
    private func waitingForTheWriteLock<T>(_ connection: Connection, _ operation: () async throws -> T) async throws -> T {
        while true {
            do {
                return try await operation()
            } catch let error as SQLError
                where connection.dialect == .sqlite && error.kind == .timeout && (error.resultCode ?? 0) & 0xFF == 5  // SQLITE_BUSY
            {
                try await Runtime.checkpoint()
            }
        }
    }

    private func applyInTransaction(_ migration: Migration, _ connection: Connection) async throws -> Bool {
        try await connection.withTransaction { connection in
            // Serialized with other migrators: PostgreSQL locks the record table (a lock that conflicts with
            // itself, held to the end of the transaction); SQLite's BEGIN IMMEDIATE already holds the write lock.
            if connection.dialect == .postgresql {
                try await connection.execute("LOCK TABLE \(table) IN SHARE ROW EXCLUSIVE MODE")
            }
            return try await runUnlessRecorded(migration, connection)
        }
    }

    /// Reads the record again (another migrator may have gone first), then runs and records `migration`
    /// unless it is there.
    private func runUnlessRecorded(_ migration: Migration, _ connection: Connection) async throws -> Bool {
        let recorded = try await applied(connection)
        try checkHistory(recorded)
        guard !recorded.contains(migration.identifier) else { return false }
        try await migration.run(connection)
        let position = migrations.firstIndex { $0.identifier == migration.identifier } ?? 0
        try await record(migration, position: position, connection)
        return true
    }

    private func record(_ migration: Migration, position: Int, _ connection: Connection) async throws {
        let now = ISO8601Timestamp.now()
        try await connection.execute(
            "INSERT INTO \(table) (position, identifier, applied_at) VALUES (\(position + 1), \(migration.identifier), \(now))")
    }
}

/// The migrations and the database disagree, or a migration cannot be read. Thrown before anything runs
/// when found at the start; found before a later migration (the history changed meanwhile), the migrations
/// applied before it by the same call stay applied and recorded.
public struct MigrationError: Error, Sendable, CustomStringConvertible {
    /// What is wrong.
    public let message: String

    init(_ message: String) { self.message = message }

    public var description: String { "MigrationError: \(message)" }
}

/// The current time as ISO 8601 text in UTC (`2026-12-07T01:02:03Z`), without Foundation.
enum ISO8601Timestamp {
    static func now() -> String {
        var seconds = time(nil)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var buffer = [CChar](repeating: 0, count: 32)
        let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%SZ", &parts)
        return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
