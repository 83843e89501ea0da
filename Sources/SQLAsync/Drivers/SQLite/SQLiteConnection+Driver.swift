// SQLite as a DatabaseDriver: what differs from PostgreSQL in transactions and streams.

extension SQLiteConnection: DatabaseDriver {
    var dialect: SQLDialect { .sqlite }
    var isRemote: Bool { false }

    func openCursor(_ sql: String, _ binds: [SQLValue]) async throws -> any DriverCursor {
        SQLiteStreamCursor(connection: self, cursor: try await openStream(sql, binds))
    }

    /// A statement's failure never leaves the connection unusable: the thread and the database stay.
    var isBroken: Bool { false }

    /// SQLite has no failed-transaction state: a failed statement is undone alone.
    var isInFailedTransaction: Bool { false }

    func isReusable() async -> Bool { await isIdleOutsideTransaction() }

    /// A read-only transaction begins deferred, so that readers do not serialize on the writer lock in WAL
    /// mode, and is made read-only for the session (SQLite has no per-transaction read-only mode).
    /// Isolation levels have no effect: SQLite runs every transaction serializably.
    func beginStatements(isolation: IsolationLevel?, readOnly: Bool) -> [String] {
        readOnly ? ["BEGIN DEFERRED", "PRAGMA query_only = ON"] : ["BEGIN IMMEDIATE"]
    }

    func statementsAfterReadOnlyTransaction() -> [String] { ["PRAGMA query_only = OFF"] }

    /// An interrupted statement (a cancellation) makes SQLite roll the whole transaction back by itself.
    func rolledBackItself(_ error: SQLError) -> Bool {
        error.message.contains("no transaction is active") || error.message.hasPrefix("no such savepoint")
    }
}

/// A stream's cursor on a SQLite connection.
struct SQLiteStreamCursor: DriverCursor {
    let connection: SQLiteConnection
    let cursor: SQLiteCursor

    func next(limit: Int, sql: String) async throws -> RawRows? {
        try await connection.nextRows(cursor, limit: limit, sql: sql)
    }

    func close() async { await connection.closeStream(cursor) }
}
