import Logging
import Runtime
import Synchronization

/// A connection to a database: statements, written once with ``SQL``, compiled for its dialect.
///
/// Obtain one from ``Engine/connect()``; call ``close()`` when done. A connection serves one task at a time.
public final class Connection: Sendable {
    enum Driver: Sendable {
        case postgres(PostgresConnection)
        case sqlite(SQLiteConnection)
    }

    let driver: Driver
    /// The pool this connection returns to on ``close()``, and when it was opened.
    private let pool: ConnectionPool?
    private let openedAt: Int64
    private let released = Atomic<Bool>(false)
    private let logger: Logger?
    /// 0 outside a transaction, 1 in one, more inside savepoints.
    let transactionDepth = Mutex(0)
    let readOnlyTransaction = Mutex(false)
    private let broken = Atomic<Bool>(false)

    init(_ driver: Driver) {
        self.driver = driver
        self.pool = nil
        self.openedAt = 0
        self.logger = nil
    }

    init(_ pooled: ConnectionPool.Pooled, pool: ConnectionPool, logger: Logger) {
        self.driver = pooled.driver
        self.pool = pool
        self.openedAt = pooled.openedAt
        self.logger = logger
    }

    /// Marks the connection unusable (its state could not be restored).
    func markBroken() { broken.store(true, ordering: .releasing) }

    /// Runs `sql` and reads its whole result. Every interpolated value is a bound parameter.
    ///
    /// - Parameter parameters: the values of the statement's named parameters (`\(parameter: "name")`).
    /// - Throws: ``SQLError`` (its SQL text, never the values); `CancellationError` when cancelled — the
    ///   statement was cancelled on the server or interrupted, and the connection is clean (or, if that could
    ///   not be ensured, ``isBroken``).
    @discardableResult
    public func execute(_ sql: SQL, parameters: [String: any SQLBindable] = [:]) async throws -> QueryResult {
        let binds = try sql.binds(parameters.mapValues(\.sqlValue))
        return try await execute(text: sql.text(placeholders: dialect.placeholderStyle), binds: binds)
    }

    /// The SQL dialect of the database behind this connection.
    public var dialect: SQLDialect {
        switch driver {
        case .postgres: .postgresql
        case .sqlite: .sqlite
        }
    }

    /// Runs compiled `text` with `binds` (one per placeholder).
    func execute(text: String, binds: [SQLValue]) async throws -> QueryResult {
        guard !released.load(ordering: .acquiring) else {
            throw SQLError(.misuse, "the connection was closed (returned to its pool)", sql: text)
        }
        // The SQL text with placeholders only: bound values never reach a log.
        logger?.debug("execute", metadata: ["sql": "\(text)", "parameters": "\(binds.count)"])
        switch driver {
        case .postgres(let connection): return QueryResult(try await connection.execute(text, binds))
        case .sqlite(let connection): return QueryResult(try await connection.execute(text, binds))
        }
    }

    /// Whether the connection can no longer be used (the server went away, or a cancelled query could not
    /// be cleaned up); discard it.
    public var isBroken: Bool {
        if broken.load(ordering: .acquiring) { return true }
        switch driver {
        case .postgres(let connection): return connection.isBroken
        case .sqlite: return false
        }
    }

    /// Whether the database itself reports no open transaction (PostgreSQL: libpq's transaction status).
    private var serverIsIdle: Bool {
        switch driver {
        case .postgres(let connection): connection.isIdleOutsideTransaction
        case .sqlite: true
        }
    }

    /// Returns the connection to its engine's pool (or closes it when it came from no pool). A broken
    /// connection, or one left inside a transaction, is closed instead of reused. Idempotent; not interrupted
    /// by cancellation.
    public func close() async {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        guard let pool else {
            await ConnectionPool.close(driver)
            return
        }
        await pool.release(
            ConnectionPool.Pooled(driver: driver, openedAt: openedAt), healthy: !isBroken && !isInTransaction && serverIsIdle)
    }
}
