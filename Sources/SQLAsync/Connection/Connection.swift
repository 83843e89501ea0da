import Logging
import Runtime
import Synchronization

/// A connection to a database: statements, written once with ``SQL``, compiled for its dialect.
///
/// Obtain one from ``Engine/connect(timeout:)``; call ``close()`` when done. A connection serves one task at a time.
public final class Connection: Sendable {
    let driver: any DatabaseDriver
    /// The pool this connection returns to on ``close()``, and when it was opened.
    let pool: ConnectionPool?
    private let openedAt: Int64
    private let released = Atomic<Bool>(false)
    /// Lent by the pool for a moment: never closed or given back by this.
    private let borrowed: Bool
    let logger: Logger?
    /// How long one statement may run (``PoolConfiguration/statementTimeout``).
    let statementTimeout: Duration?
    /// How long clean-up may keep a cancelled caller waiting (``PoolConfiguration/cancellationGrace``).
    let grace: Duration
    /// 0 outside a transaction, 1 in one, more inside savepoints.
    let transactionDepth = Locked(0)
    let readOnlyTransaction = Locked(false)
    private let broken = Atomic<Bool>(false)
    /// What observes statements and transactions (the engine's), if anything.
    let instrumentation: (any SQLInstrumentation)?

    /// A connection over a driver the pool lends it for a moment (a ping): the pool, not this, closes it.
    init(borrowing driver: any DatabaseDriver) {
        self.driver = driver
        self.pool = nil
        self.openedAt = 0
        self.logger = nil
        self.statementTimeout = nil
        self.grace = PoolConfiguration().cancellationGrace
        self.borrowed = true
        self.instrumentation = nil
    }

    init(
        _ pooled: ConnectionPool.Pooled, pool: ConnectionPool, logger: Logger, statementTimeout: Duration?,
        instrumentation: (any SQLInstrumentation)?
    ) {
        self.borrowed = false
        self.instrumentation = instrumentation
        self.driver = pooled.driver
        self.pool = pool
        self.openedAt = pooled.openedAt
        self.logger = logger
        self.statementTimeout = statementTimeout
        self.grace = pool.configuration.cancellationGrace
    }

    deinit {
        // Dropped without close(): the slot goes back to the pool (or to a waiter) and the connection is
        // closed, so that a forgotten connection neither starves the pool nor keeps its server session, with
        // the locks of an open transaction, alive. It is never reused: its state is unknown.
        guard !borrowed, !released.load(ordering: .acquiring) else { return }
        logger?.warning("a Connection was dropped without close(): it is closed, and its pool slot freed")
        if let pool {
            pool.releaseDropped(ConnectionPool.Pooled(driver: driver, openedAt: openedAt))
        } else {
            driver.closeDropped()
        }
    }

    /// Marks the connection unusable (its state could not be restored).
    func markBroken() { broken.store(true, ordering: .releasing) }

    /// Runs `sql` and reads its whole result. Every interpolated value is a bound parameter.
    ///
    /// - Parameters:
    ///   - sql: the statement.
    ///   - parameters: the values of the statement's named parameters (`\(parameter: "name")`).
    /// - Throws: ``SQLError`` (its SQL text, never the values); `CancellationError` when cancelled — the
    ///   statement was cancelled on the server or interrupted, and the connection is clean (or, if that could
    ///   not be ensured, ``isBroken``).
    @discardableResult
    public func execute(_ sql: SQL, parameters: [String: any SQLBindable] = [:]) async throws -> QueryResult {
        let binds = try sql.binds(parameters.mapValues(\.sqlValue))
        return try await execute(text: sql.text(placeholders: dialect.placeholderStyle), binds: binds)
    }

    /// The SQL dialect of the database behind this connection.
    public var dialect: SQLDialect { driver.dialect }

    /// Throws when the connection was given back: a stale reference must not run statements on a connection
    /// another task now holds.
    func checkOpen(_ sql: String) throws(SQLError) {
        guard !released.load(ordering: .acquiring) else {
            throw SQLError(.misuse, "the connection was closed (returned to its pool)", sql: sql)
        }
        // libpq and SQLite read statement text as a C string: a NUL would silently cut the statement short.
        guard !sql.utf8.contains(0) else {
            throw SQLError(.misuse, "the SQL text contains a NUL byte (an identifier or raw text with one?)")
        }
    }

    /// Runs a script of several statements separated by `;` — a schema file, a migration — and returns when
    /// all have run; stops at the first error.
    ///
    /// PostgreSQL runs it through the simple query protocol, in one implicit transaction unless the script
    /// says `BEGIN` / `COMMIT` itself (so a failing script changes nothing); SQLite runs it statement by
    /// statement, each in its own transaction unless the script opens one. A script takes no parameters:
    /// its text is sent as it is, so build it from trusted text only, never from values.
    ///
    /// - Throws: ``SQLError`` of the first failing statement; `CancellationError` (nothing is sent when
    ///   cancelled before; a running script is cancelled on the server or interrupted).
    public func executeScript(_ script: String) async throws {
        try checkOpen(script)
        logger?.debug("execute script", metadata: ["sql": "\(script)"])
        try await running(script, isScript: true) { try await driver.executeScript(script) }
    }

    /// Runs compiled `text` with `binds` (one per placeholder).
    func execute(text: String, binds: [SQLValue]) async throws -> QueryResult {
        try checkOpen(text)
        // The SQL text with placeholders only: bound values never reach a log.
        logger?.debug("execute", metadata: ["sql": "\(text)", "parameters": "\(binds.count)"])
        return QueryResult(try await running(text, rows: \.rowCount) {
            try await driver.execute(text, binds)
        })
    }

    /// Runs one statement once per parameter set: PostgreSQL sends the whole batch in pipeline mode (one round
    /// trip); SQLite runs it in one job on its thread. All sets take effect or none: SQLite wraps the batch in
    /// a savepoint; on PostgreSQL outside a transaction the pipeline is one implicit transaction, and a batch
    /// cancelled before it was fully sent closes the connection, which rolls it back.
    ///
    /// ```swift
    /// let insertUser = try insert(into: Users.self)
    ///     .values(Users.name.set(Parameter<String>("name")), Users.age.set(Parameter<Int>("age"))).compiled()
    /// try await connection.executeMany(insertUser, parameterSets: people.map { ["name": $0.name, "age": $0.age] })
    /// ```
    ///
    /// - Returns: the rows every execution returned (for `RETURNING`), and ``QueryResult/rowsAffected`` summed.
    /// - Throws: ``SQLError`` (the first error; nothing of the batch is kept); `CancellationError`.
    @discardableResult
    public func executeMany(_ statement: CompiledStatement, parameterSets: [[String: any SQLBindable]]) async throws -> QueryResult {
        let form = statement.form(dialect)
        var sets: [[SQLValue]] = []
        sets.reserveCapacity(parameterSets.count)
        let distinctNames = form.sql.parameterNames.count
        for parameters in parameterSets { sets.append(try form.sql.binds(parameters, distinctNames: distinctNames) { $0.sqlValue }) }
        return try await executeMany(text: form.text, sets: sets)
    }

    /// ``executeMany(_:parameterSets:)`` for a statement written with named parameters
    /// (`\(parameter: "name")`) or built with ``Parameter``s.
    @discardableResult
    public func executeMany(_ statement: some SQLStatement, parameterSets: [[String: any SQLBindable]]) async throws -> QueryResult {
        try await executeMany(try statement.compiled(), parameterSets: parameterSets)
    }

    /// Runs compiled `text` once per set of values (one per placeholder).
    func executeMany(text: String, sets: [[SQLValue]]) async throws -> QueryResult {
        try checkOpen(text)
        logger?.debug("executeMany", metadata: ["sql": "\(text)", "sets": "\(sets.count)"])
        return QueryResult(try await running(text, rows: \.rowCount) {
            try await driver.executeMany(text, sets)
        })
    }

    /// Runs one call on the driver: within the engine's statement timeout, if it has one; an error that
    /// means the server went away has the pool check its idle connections before their next use.
    func running<T>(
        _ sql: String, isScript: Bool = false, rows: ((T) -> Int)? = nil, _ call: () async throws -> T
    ) async throws -> T {
        guard let instrumentation, let span = instrumentation.statementStarted(statementInfo(sql, isScript: isScript)) else {
            return try await timed(sql, call)
        }
        do {
            let result = try await timed(sql, call)
            span.ended(rows: rows?(result), error: nil)
            return result
        } catch {
            span.ended(rows: nil, error: error)
            throw error
        }
    }

    /// What an observer is told about `sql`.
    func statementInfo(_ sql: String, isScript: Bool = false) -> SQLStatementInfo {
        SQLStatementInfo(text: sql, system: pool?.system ?? .sqlite, namespace: pool?.namespace, isScript: isScript)
    }

    private func timed<T>(_ sql: String, _ call: () async throws -> T) async throws -> T {
        do {
            guard let statementTimeout else { return try await call() }
            do {
                return try await failAfter(statementTimeout) { try await call() }
            } catch is TimeoutError {
                throw SQLError(.timeout, "the statement ran longer than the statement timeout (\(statementTimeout)); it was cancelled", sql: sql)
            }
        } catch let error as SQLError where error.kind == .connection || error.kind == .commitInDoubt {
            pool?.invalidate()
            throw error
        }
    }

    /// Whether the connection can no longer be used (the server went away, or a cancelled query could not
    /// be cleaned up); discard it.
    public var isBroken: Bool {
        broken.load(ordering: .acquiring) || driver.isBroken
    }

    /// Whether no call runs on the connection and the database itself reports no open transaction
    /// (PostgreSQL: libpq's transaction status; SQLite: autocommit mode, read on the connection's thread).
    /// A connection another task still runs a call on is never reused.
    private func serverIsIdle() async -> Bool { await driver.isReusable() }

    /// Returns the connection to its engine's pool (or closes it when it came from no pool). A broken
    /// connection, or one left inside a transaction, is closed instead of reused. Idempotent; not interrupted
    /// by cancellation.
    public func close() async {
        guard !released.exchange(true, ordering: .acquiringAndReleasing) else { return }
        guard !borrowed else { return }
        guard let pool else {
            await driver.close()
            return
        }
        let healthy = !isBroken && !isInTransaction ? await serverIsIdle() : false
        await pool.release(ConnectionPool.Pooled(driver: driver, openedAt: openedAt), healthy: healthy)
    }
}
