public import Logging
import Runtime
import Synchronization

/// The entry point to a database: a URL and the settings to connect with.
///
/// ```swift
/// let engine = try Engine("sqlite::memory:")                    // or postgresql://user:pass@host/db
/// let names = try await engine.withConnection { connection in
///     try await connection.execute("SELECT name FROM users WHERE id = \(42)").scalars(String.self)
/// }
/// ```
///
/// Waits go through `Runtime.current` only: the same code runs on every backend.
public final class Engine: Sendable {
    /// Where the database is. Its description hides the password.
    public let url: DatabaseURL
    /// How connections are pooled.
    public let poolConfiguration: PoolConfiguration
    /// Where the engine logs: connections at info level, every statement's SQL at debug level. Bound
    /// values and the password never appear.
    public let logger: Logger

    /// One pool per runtime: a PostgreSQL socket is registered with the loop that opened it.
    private let pools = Locked<(byRuntime: [ObjectIdentifier: ConnectionPool], disposed: Bool)>(([:], false))

    /// - Parameters:
    ///   - url: the database URL.
    ///   - pool: pool settings. An in-memory SQLite database lives inside one connection, so its pool holds
    ///     exactly one.
    ///   - logger: where the engine logs (by default a logger labelled `anyruntime.sqlasync`).
    ///   - password: for PostgreSQL, where each new connection's password comes from when the URL has none
    ///     (see ``PasswordProvider``).
    ///   - readRouting: for PostgreSQL, the standbys that serve read-only work (see ``ReadRouting``).
    ///   - instrumentation: what observes the engine's statements, transactions and pool (metrics, tracing:
    ///     see ``SQLInstrumentation``); nothing by default.
    /// - Throws: ``SQLError/Kind/invalidURL`` naming the problem (never the password), also for read routing
    ///   on a database that is not PostgreSQL; ``SQLError/Kind/misuse`` for a pool configuration that cannot
    ///   work (see ``PoolConfiguration/validate()``).
    public convenience init(
        _ url: String, pool: PoolConfiguration = PoolConfiguration(),
        logger: Logger = Logger(label: "anyruntime.sqlasync"), password: PasswordProvider? = nil,
        readRouting: ReadRouting? = nil, instrumentation: (any SQLInstrumentation)? = nil
    ) throws(SQLError) {
        self.init(url: try DatabaseURL(url), pool: pool, logger: logger, password: password, readRouting: readRouting, instrumentation: instrumentation)
        // What every checkout of an engine made from a parsed URL would throw, thrown at once.
        if let configurationError { throw configurationError }
    }

    /// Where a PostgreSQL connection's password comes from when the URL has none: called for every new
    /// connection, so that a rotating credential (a token from a secrets store, a cloud provider's IAM
    /// token) is fresh each time. What it returns is never logged or shown in an error.
    public typealias PasswordProvider = @Sendable () async throws -> String

    /// Asked for a password for each new PostgreSQL connection (see ``PasswordProvider``).
    let passwordProvider: PasswordProvider?

    /// An engine for `url`.
    ///
    /// - Parameters:
    ///   - url: the database URL.
    ///   - pool: pool settings.
    ///   - logger: where the engine logs.
    ///   - password: for PostgreSQL, where each new connection's password comes from when the URL has none.
    ///     Without it (and without one in the URL) libpq looks in the URL's `passfile`, the file `PGPASSFILE`
    ///     names, or `~/.pgpass`.
    ///   - readRouting: for PostgreSQL, the standbys that serve read-only work (see ``ReadRouting``). With
    ///     another database, or a pool configuration that cannot work (``PoolConfiguration/validate()``),
    ///     every checkout throws what `Engine(_:pool:)` would have thrown at once.
    ///   - instrumentation: what observes the engine's work (see ``SQLInstrumentation``); nothing by default.
    public init(
        url: DatabaseURL, pool: PoolConfiguration = PoolConfiguration(),
        logger: Logger = Logger(label: "anyruntime.sqlasync"), password: PasswordProvider? = nil,
        readRouting: ReadRouting? = nil, instrumentation: (any SQLInstrumentation)? = nil
    ) {
        self.url = url
        self.instrumentation = instrumentation
        self.passwordProvider = password
        self.poolConfiguration = Self.adjusted(pool, for: url)
        do throws(SQLError) {
            try pool.validate()
            try readRouting?.pool.validate()
            if readRouting != nil, url.database != .postgresql {
                throw SQLError(.invalidURL, "read routing needs a PostgreSQL primary, not \(url.database)")
            }
            self.configurationError = nil
        } catch {
            self.configurationError = error
        }
        var logger = logger
        logger[metadataKey: "database"] = "\(url)"  // the description hides the password
        self.logger = logger
        self.standbys = url.database == .postgresql
            ? readRouting.map { Standbys($0, logger: logger, password: password, instrumentation: instrumentation) } : nil
    }

    /// The standbys that serve read-only work, when the engine routes reads.
    let standbys: Standbys?

    /// Why the pool configuration cannot work, if it cannot: thrown by every checkout.
    let configurationError: SQLError?

    /// What observes the engine's work, if anything.
    public let instrumentation: (any SQLInstrumentation)?

    /// Numbers the pools of every engine, so that observers can tell them apart.
    private static let nextPoolID = Atomic<Int>(0)

    private static func adjusted(_ configuration: PoolConfiguration, for url: DatabaseURL) -> PoolConfiguration {
        guard url.database == .sqlite, url.sqlitePath == nil else { return configuration }
        var single = configuration
        single.size = 1
        single.overflow = 0
        return single
    }

    /// A connection from the pool of the current runtime; ``Connection/close()`` gives it back.
    ///
    /// - Throws: ``SQLError/Kind/connection``; ``SQLError/Kind/poolTimeout`` when none became free in time;
    ///   ``SQLError/Kind/misuse`` after ``dispose()`` or for a pool configuration that cannot work (see
    ///   ``PoolConfiguration/validate()``); `CancellationError`; `RuntimeError.noRuntime` outside a runtime.
    ///
    /// - Parameter timeout: how long to wait for a free connection, for this call only; the pool's
    ///   ``PoolConfiguration/checkoutTimeout`` when `nil`.
    public func connect(timeout: Duration? = nil) async throws -> Connection {
        if let timeout, timeout < .zero {
            throw SQLError(.misuse, "the checkout timeout must be >= 0, not \(timeout)")
        }
        let pool = try await currentPool()
        return Connection(
            try await pool.checkout(timeout: timeout), pool: pool, logger: logger, statementTimeout: poolConfiguration.statementTimeout,
            instrumentation: instrumentation)
    }

    /// Closes every idle connection at once; connections in use close when they are given back, and later
    /// `connect()` calls fail. Not interrupted by cancellation. ``close(timeout:)`` also waits for them.
    public func dispose() async {
        let all = pools.withLock { pools -> [ConnectionPool] in
            pools.disposed = true
            defer { pools.byRuntime.removeAll() }
            return Array(pools.byRuntime.values)
        }
        for pool in all { await pool.dispose() }
        for standby in standbys?.engines ?? [] { await standby.dispose() }
    }

    /// Closes the engine gracefully: later `connect()` calls fail at once and idle connections close, then
    /// this waits — up to `timeout` — for the connections in use to be given back, and closes them. Not
    /// interrupted by cancellation of the wait's clean-up; a cancelled caller stops waiting.
    ///
    /// - Returns: whether every connection was given back and closed in time. When not, those still in use
    ///   close as they are given back.
    @discardableResult
    public func close(timeout: Duration = .seconds(30)) async -> Bool {
        let all = pools.withLock { pools -> [ConnectionPool] in
            pools.disposed = true
            defer { pools.byRuntime.removeAll() }
            return Array(pools.byRuntime.values)
        }
        for pool in all { await pool.dispose() }
        guard let runtime = try? Runtime.current else {
            for standby in standbys?.engines ?? [] { await standby.dispose() }
            return all.isEmpty
        }
        let deadline = runtime.now.advanced(by: max(timeout, .zero))
        var drained = true
        for pool in all where !(await pool.waitUntilDrained(deadline: deadline)) { drained = false }
        for standby in standbys?.engines ?? [] where !(await standby.close(timeout: runtime.now.duration(to: deadline))) { drained = false }
        if !drained {
            logger.warning("engine closed with connections still in use after \(timeout); they close as they are given back")
        }
        return drained
    }

    private func currentPool() async throws -> ConnectionPool {
        let runtime = try Runtime.current
        if let configurationError { throw configurationError }
        let url = self.url
        let logger = self.logger
        let passwordProvider = self.passwordProvider
        let found = pools.withLock { pools -> (ConnectionPool, [ConnectionPool])? in
            guard !pools.disposed else { return nil }
            // Pools of runtimes that have ended can serve nobody again.
            let ended = pools.byRuntime.filter { $0.value.runtime.backend.diagnostics().isClosed }
            for key in ended.keys { pools.byRuntime[key] = nil }
            if let pool = pools.byRuntime[ObjectIdentifier(runtime)] { return (pool, Array(ended.values)) }
            let configuration = poolConfiguration
            let pool = ConnectionPool(
                runtime: runtime, configuration: configuration, instrumentation: instrumentation, poolID: Self.nextPoolID.add(1, ordering: .relaxed).newValue,
                system: url.database == .postgresql ? .postgresql : .sqlite,
                namespace: url.database == .postgresql ? url.databaseName : url.sqlitePath
            ) {
                logger.info("opening a connection", metadata: ["runtime": "\(runtime.name)"])
                switch url.database {
                case .postgresql:
                    return try await PostgresConnection.connect(
                        url, logger: logger, timeout: configuration.connectTimeout, grace: configuration.cancellationGrace,
                        password: url.hasPassword ? nil : passwordProvider, preparedStatements: configuration.preparedStatements)
                case .sqlite: return try await SQLiteConnection.open(path: url.sqlitePath, mode: url.sqliteMode)
                }
            }
            pools.byRuntime[ObjectIdentifier(runtime)] = pool
            return (pool, Array(ended.values))
        }
        guard let (pool, ended) = found else { throw ConnectionPool.disposedError }
        for old in ended { await old.dispose() }
        return pool
    }

    /// Tells the current runtime's pool that the server went away (a listener lost its connection): the
    /// connections idle since are checked before they are handed out.
    func serverWentAway() throws {
        let runtime = try Runtime.current
        pools.withLock { $0.byRuntime[ObjectIdentifier(runtime)] }?.invalidate()
    }

    /// The pool of the current runtime: open, idle and waiting counts (for tests and diagnostics).
    public func poolStatistics() throws -> (open: Int, idle: Int, waiting: Int) {
        let runtime = try Runtime.current
        return pools.withLock { $0.byRuntime[ObjectIdentifier(runtime)]?.statistics } ?? (0, 0, 0)
    }

    /// Opens a connection, runs `body` with it and closes it, also when `body` throws or is cancelled.
    ///
    /// - Parameters:
    ///   - timeout: how long to wait for a free connection (see ``connect(timeout:)``).
    ///   - isolation: the caller's isolation (leave the default).
    ///   - body: the work; it gets the connection.
    @discardableResult
    public func withConnection<T>(
        timeout: Duration? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        let connection = try await connect(timeout: timeout)
        do {
            let result = try await body(connection)
            await connection.close()
            return result
        } catch {
            await connection.close()
            throw error
        }
    }

    /// A connection from the pool with a transaction around `body`: committed when `body` returns, rolled back
    /// when it throws or is cancelled (SQLAlchemy's `engine.begin()`). With ``ReadRouting``, a `readOnly`
    /// transaction runs on a standby (``read(isolationLevel:isolation:_:)``).
    ///
    /// ```swift
    /// try await engine.begin { connection in
    ///     try await connection.execute(insert(into: Users.self).values(Users.name.set("ann")))
    /// }
    /// ```
    @discardableResult
    public func begin<T>(
        isolationLevel: IsolationLevel? = nil, readOnly: Bool = false,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        if readOnly, standbys != nil { return try await read(isolationLevel: isolationLevel, body) }
        return try await withConnection { connection in
            try await connection.withTransaction(isolationLevel: isolationLevel, readOnly: readOnly, body)
        }
    }
}
