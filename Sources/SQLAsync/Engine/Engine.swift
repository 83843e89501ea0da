import Runtime

/// The entry point to a database: a URL and the settings to connect with.
///
/// ```swift
/// let engine = try Engine("sqlite::memory:")                    // or postgresql://user:pass@host/db
/// let names = try await engine.withConnection { connection in
///     try await connection.execute("SELECT name FROM users WHERE id = \(42)").scalars(String.self)
/// }
/// ```
///
/// Waits go through ``Runtime/current`` only: the same code runs on every backend.
public final class Engine: Sendable {
    /// Where the database is. Its description hides the password.
    public let url: DatabaseURL

    /// - Throws: ``SQLError/Kind/invalidURL`` naming the problem (never the password).
    public init(_ url: String) throws(SQLError) {
        self.url = try DatabaseURL(url)
    }

    /// An engine for `url`.
    public init(url: DatabaseURL) { self.url = url }

    /// Opens a new connection on the current runtime.
    ///
    /// - Throws: ``SQLError/Kind/connection``; `CancellationError`; `RuntimeError.noRuntime` outside a runtime.
    public func connect() async throws -> Connection {
        switch url.database {
        case .postgresql: Connection(.postgres(try await PostgresConnection.connect(url)))
        case .sqlite: Connection(.sqlite(try await SQLiteConnection.open(path: url.sqlitePath)))
        }
    }

    /// Opens a connection, runs `body` with it and closes it, also when `body` throws or is cancelled.
    public func withConnection<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        let connection = try await connect()
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }
}
