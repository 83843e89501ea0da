/// What the pool, ``Connection``, transactions, results and the ORM need from a database: everything
/// database-specific sits behind this, so none of them switches on the database.
///
/// A driver connection serves one call at a time (the pool lends it to one task); a second concurrent call is
/// a ``SQLError/Kind/misuse`` error, never a corrupted exchange. Every call keeps the promise the
/// *Cancellation safety* article states: nothing is sent from cancelled code, and a call that throws
/// `CancellationError` had no effect.
protocol DatabaseDriver: AnyObject, Sendable {
    /// The SQL dialect statements are compiled for.
    var dialect: SQLDialect { get }

    /// Whether the database is a server across a network, which can stop answering: then a COMMIT's answer
    /// is awaited only up to the caller's deadline plus the cancellation grace. An embedded database's
    /// COMMIT is local and short, and is awaited whole.
    var isRemote: Bool { get }

    /// Runs `sql` with `binds` (one per placeholder) and returns every row of its result.
    func execute(_ sql: String, _ binds: [SQLValue]) async throws -> RawRows

    /// Runs `sql` once per set of binds, all or nothing; returns every execution's rows, and the rows
    /// affected by all.
    func executeMany(_ sql: String, _ sets: [[SQLValue]]) async throws -> RawRows

    /// Runs a script of several statements, without parameters; stops at the first error.
    func executeScript(_ script: String) async throws

    /// Starts `sql` and returns a cursor over its rows; the connection is the cursor's until it is closed.
    func openCursor(_ sql: String, _ binds: [SQLValue]) async throws -> any DriverCursor

    /// Whether a lost server or a failed clean-up left the connection unusable.
    var isBroken: Bool { get }

    /// Whether the database had a transaction open (or failed) after the last call, in its own word.
    var isInTransaction: Bool { get }

    /// Whether the open transaction failed, so that a COMMIT would silently roll it back.
    var isInFailedTransaction: Bool { get }

    /// Whether the connection can go back to a pool: no call holds it, not broken, no transaction open.
    func isReusable() async -> Bool

    /// Closes the connection; not interrupted by cancellation. A call still running closes it when it ends.
    func close() async

    /// Closes the connection from synchronous code (its ``Connection`` was dropped without `close()`):
    /// returns at once, and the connection is closed shortly after (the server then ends the session,
    /// rolling back what it had open and releasing its locks).
    func closeDropped()

    /// The statements that start an outermost transaction.
    func beginStatements(isolation: IsolationLevel?, readOnly: Bool) -> [String]

    /// The statements that undo a read-only transaction's session settings once it ended.
    func statementsAfterReadOnlyTransaction() -> [String]

    /// Whether `error`, from a rollback, means that the database had already rolled the transaction back by
    /// itself, so nothing is left to undo.
    func rolledBackItself(_ error: SQLError) -> Bool
}

/// An open query whose rows are read in batches (see ``RowStream``).
protocol DriverCursor: Sendable {
    /// Up to `limit` more rows; `nil` after the last.
    func next(limit: Int, sql: String) async throws -> RawRows?

    /// Ends the query, cancelling what is left of it; the connection is free again afterwards. Not
    /// interrupted by cancellation.
    func close() async
}
