// PostgreSQL as a DatabaseDriver: what differs from SQLite in transactions and streams.

extension PostgresConnection: DatabaseDriver {
    var dialect: SQLDialect { .postgresql }
    var isRemote: Bool { true }

    func openCursor(_ sql: String, _ binds: [SQLValue]) async throws -> any DriverCursor {
        try await openStream(sql, binds)
        return PostgresCursor(connection: self)
    }

    func beginStatements(isolation: IsolationLevel?, readOnly: Bool) -> [String] {
        var text = "BEGIN"
        if let isolation { text += " ISOLATION LEVEL \(isolation.rawValue)" }
        if readOnly { text += " READ ONLY" }
        return [text]
    }

    /// `BEGIN … READ ONLY` sets nothing that outlives the transaction.
    func statementsAfterReadOnlyTransaction() -> [String] { [] }

    /// PostgreSQL keeps a failed transaction open until it is rolled back.
    func rolledBackItself(_ error: SQLError) -> Bool { false }
}

/// A stream's query on a PostgreSQL connection, which it holds until closed.
struct PostgresCursor: DriverCursor {
    let connection: PostgresConnection

    func next(limit: Int, sql: String) async throws -> RawRows? { try await connection.nextRows(limit: limit, sql: sql) }

    func close() async { await connection.closeStream() }
}
