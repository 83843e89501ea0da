/// What an engine tells an observer about its work: the hook that metrics and tracing integrations
/// (`SQLAsyncMetrics`, `SQLAsyncTracing`) implement.
///
/// ```swift
/// let engine = try Engine(url, instrumentation: SQLInstrumentations([SQLMetrics(), SQLTracing()]))
/// ```
///
/// Every method is called in the task doing the work (so task-locals such as a trace context are the
/// caller's), synchronously and briefly: record, never wait. An engine without instrumentation pays a `nil`
/// check per statement and checkout. Statement text is the SQL with its placeholders (`$1`, `?`); bound
/// values are never given to an observer. A stream is one statement, from its query to the end of its
/// `stream { }` call (the body's time included), with the rows it handed out.
public protocol SQLInstrumentation: Sendable {
    /// A statement is about to be sent; the returned span (if any) is told how it ended.
    func statementStarted(_ statement: SQLStatementInfo) -> (any SQLStatementSpan)?

    /// Runs a transaction's body (`withTransaction`): an observer may time it, or make it the parent of the
    /// statements inside (a tracer binds its span's context around `body`).
    func transaction<T>(_ transaction: SQLTransactionInfo, _ body: () async throws -> T) async throws -> T

    /// A checkout ended: it got a connection after `waited`, or failed.
    func checkoutEnded(waited: Duration, outcome: SQLCheckoutOutcome, pool: SQLPoolStatistics)

    /// A connection was given back to the pool (or closed).
    func connectionReturned(pool: SQLPoolStatistics)

    /// Opening a connection failed (the error is typed; its message never holds the password).
    func connectFailed(_ error: any Error, database: SQLDatabaseSystem)
}

extension SQLInstrumentation {
    public func statementStarted(_ statement: SQLStatementInfo) -> (any SQLStatementSpan)? { nil }
    public func transaction<T>(_ transaction: SQLTransactionInfo, _ body: () async throws -> T) async throws -> T {
        try await body()
    }
    public func checkoutEnded(waited: Duration, outcome: SQLCheckoutOutcome, pool: SQLPoolStatistics) {}
    public func connectionReturned(pool: SQLPoolStatistics) {}
    public func connectFailed(_ error: any Error, database: SQLDatabaseSystem) {}
}

/// How one statement ended, told to the span ``SQLInstrumentation/statementStarted(_:)`` returned.
public protocol SQLStatementSpan: Sendable {
    /// The statement returned `rows` rows (0 for one that returns none, whatever it changed; nil when not
    /// known), or threw `error`.
    func ended(rows: Int?, error: (any Error)?)
}

/// The database an engine talks to.
public enum SQLDatabaseSystem: String, Sendable {
    case postgresql, sqlite
}

/// A statement about to run.
public struct SQLStatementInfo: Sendable {
    /// The SQL text, with placeholders; never the bound values. Nil for a script (`executeScript`), whose
    /// text is written out whole — a `CREATE ROLE … PASSWORD '…'` in a migration, say — and is withheld.
    /// Text written with `SQL.unsafeRaw` is given as written: keep secrets out of it, or bind them.
    public var text: String? { sql }
    /// Its first keyword, upper-cased, when it is one of SQL's usual statements (`SELECT`, `INSERT`, `COPY`…),
    /// else `OTHER` (`SCRIPT` for a script): a name with few values, fit for a metric's dimension. Worked out
    /// when read (an observer with nothing bootstrapped declines before it does): read it once.
    public var operation: String {
        guard let sql else { return "SCRIPT" }
        let trimmed = sql.utf8.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "(") || (9...13).contains($0) }
        let letters = trimmed.prefix { (65...90).contains($0) || (97...122).contains($0) }
        guard (3...9).contains(letters.count) else { return "OTHER" }
        let keyword = String(decoding: letters.map { $0 & 0xDF }, as: UTF8.self)
        return Self.operations.contains(keyword) ? keyword : "OTHER"
    }
    public let system: SQLDatabaseSystem
    /// The database name (PostgreSQL) or file path (SQLite), when the URL has one.
    public let namespace: String?
    /// Nil for a script: its text is not kept at all, so no description or dump of this value can show it.
    private let sql: String?

    init(text: String, system: SQLDatabaseSystem, namespace: String?, isScript: Bool = false) {
        self.sql = isScript ? nil : text
        self.system = system
        self.namespace = namespace
    }

    private static let operations: Set<String> = [
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "WITH", "VALUES", "COPY", "CALL", "CREATE", "ALTER", "DROP",
        "TRUNCATE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "SHOW", "LOCK", "LISTEN",
        "UNLISTEN", "NOTIFY", "EXPLAIN", "ANALYZE", "VACUUM", "PRAGMA", "GRANT", "REVOKE",
    ]
}

/// A transaction about to run.
public struct SQLTransactionInfo: Sendable {
    public let system: SQLDatabaseSystem
    public let namespace: String?
    /// Whether it is a savepoint inside an outer transaction.
    public let isNested: Bool
    public let readOnly: Bool
}

/// How a checkout ended.
public enum SQLCheckoutOutcome: String, Sendable {
    /// It got a connection (idle, or newly opened).
    case success
    /// No connection became free within the checkout timeout (``SQLError/Kind/poolTimeout``).
    case timeout
    /// Opening a connection failed, or the caller was cancelled.
    case failure
}

/// A pool's counts at one moment.
public struct SQLPoolStatistics: Sendable, Equatable {
    /// Which pool: an engine keeps one per runtime (one per event loop with `NIORuntimeHost`s), each counted
    /// on its own.
    public let poolID: Int
    /// Connections open (idle and in use).
    public let open: Int
    public let inUse: Int
    public let idle: Int
    /// Callers waiting for a connection.
    public let waiting: Int
}

/// Several observers as one: each is called in turn (transactions nest, the first outermost).
public struct SQLInstrumentations: SQLInstrumentation {
    public let observers: [any SQLInstrumentation]

    public init(_ observers: [any SQLInstrumentation]) { self.observers = observers }

    public func statementStarted(_ statement: SQLStatementInfo) -> (any SQLStatementSpan)? {
        let spans = observers.compactMap { $0.statementStarted(statement) }
        return spans.isEmpty ? nil : Spans(spans: spans)
    }

    private struct Spans: SQLStatementSpan {
        let spans: [any SQLStatementSpan]
        func ended(rows: Int?, error: (any Error)?) {
            for span in spans { span.ended(rows: rows, error: error) }
        }
    }

    public func transaction<T>(_ transaction: SQLTransactionInfo, _ body: () async throws -> T) async throws -> T {
        try await nest(observers[...], transaction, body)
    }

    private func nest<T>(
        _ rest: ArraySlice<any SQLInstrumentation>, _ transaction: SQLTransactionInfo, _ body: () async throws -> T
    ) async throws -> T {
        guard let first = rest.first else { return try await body() }
        return try await first.transaction(transaction) { try await nest(rest.dropFirst(), transaction, body) }
    }

    public func checkoutEnded(waited: Duration, outcome: SQLCheckoutOutcome, pool: SQLPoolStatistics) {
        for observer in observers { observer.checkoutEnded(waited: waited, outcome: outcome, pool: pool) }
    }

    public func connectionReturned(pool: SQLPoolStatistics) {
        for observer in observers { observer.connectionReturned(pool: pool) }
    }

    public func connectFailed(_ error: any Error, database: SQLDatabaseSystem) {
        for observer in observers { observer.connectFailed(error, database: database) }
    }
}
