/// An error from the SQL layer: a bad URL, a failed connection, a statement the database refused, a pool
/// that timed out, a value that does not decode.
///
/// The SQL text is kept; bound values never appear in an error or its description, and neither does a
/// password.
public struct SQLError: Error, Sendable, CustomStringConvertible {
    /// What kind of failure this is.
    public struct Kind: Sendable, Hashable, CustomStringConvertible {
        private let raw: String
        private init(_ raw: String) { self.raw = raw }
        public var description: String { raw }

        /// The database URL is malformed or names an unsupported database.
        public static let invalidURL = Kind("invalidURL")
        /// Connecting failed, or the connection broke.
        public static let connection = Kind("connection")
        /// The statement is not valid SQL for this database.
        public static let syntax = Kind("syntax")
        /// A constraint (unique, foreign key, not null, check) was violated.
        public static let constraint = Kind("constraint")
        /// The transaction could not be serialized; retry it.
        public static let serializationFailure = Kind("serializationFailure")
        /// A deadlock was detected; retry the transaction.
        public static let deadlock = Kind("deadlock")
        /// A statement or lock timeout.
        public static let timeout = Kind("timeout")
        /// The query was cancelled.
        public static let cancelled = Kind("cancelled")
        /// No connection became free before the pool's checkout timeout.
        public static let poolTimeout = Kind("poolTimeout")
        /// An update found its row changed by someone else (optimistic concurrency: the version column
        /// moved on), or gone.
        public static let staleData = Kind("staleData")
        /// A value did not decode to the requested type, or a NULL met a non-optional.
        public static let decoding = Kind("decoding")
        /// The API was misused (for example a result consumed twice).
        public static let misuse = Kind("misuse")
        /// COMMIT was sent and its answer never came — the connection broke, or no answer within the commit's
        /// deadline: the transaction may or may not have committed (JDBC and psycopg call this "in doubt").
        /// Check the database before retrying; never assume it rolled back.
        public static let commitInDoubt = Kind("commitInDoubt")
        /// A statement was sent, then cancelled (its caller's deadline passed, say), and the server did not
        /// answer within the cancellation grace (``PoolConfiguration/cancellationGrace``): it may or may not
        /// have taken effect. The connection was closed; the server cannot commit a transaction it was part
        /// of, so inside `withTransaction` this is reported as `CancellationError`. Check the database before
        /// retrying an autocommitted write.
        public static let statementInDoubt = Kind("statementInDoubt")
        /// A bound value cannot be represented in the type the database gave its parameter (an integer out of
        /// an `int2` / `int4` parameter's range, say): refused before anything is sent, naming the parameter.
        public static let invalidParameter = Kind("invalidParameter")
        /// `one()` found no row (SQLAlchemy's `NoResultFound`).
        public static let noRows = Kind("noRows")
        /// `one()` or `oneOrNone()` found more than one row (SQLAlchemy's `MultipleResultsFound`).
        public static let multipleRows = Kind("multipleRows")
        /// Any other error the database reported.
        public static let database = Kind("database")
    }

    /// What kind of failure this is.
    public let kind: Kind
    /// A sentence saying what happened.
    public let message: String
    /// The SQLSTATE code (PostgreSQL), when the server sent one.
    public let sqlState: String?
    /// The result code (SQLite), when there is one.
    public let resultCode: Int32?
    /// The SQL text of the statement, without its values.
    public let sql: String?

    public init(
        _ kind: Kind, _ message: String, sqlState: String? = nil, resultCode: Int32? = nil, sql: String? = nil
    ) {
        self.kind = kind
        self.message = message
        self.sqlState = sqlState
        self.resultCode = resultCode
        self.sql = sql
    }

    public var description: String {
        var text = "SQLError.\(kind): \(message)"
        if let sqlState { text += " [SQLSTATE \(sqlState)]" }
        if let resultCode { text += " [SQLite code \(resultCode)]" }
        if let sql { text += " — SQL: \(sql)" }
        return text
    }
}
