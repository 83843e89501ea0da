/// How a PostgreSQL connection prepares its statements.
///
/// Named statements (the default against a server) are parsed and planned once per connection and run by
/// name afterwards. A connection pooler in transaction mode (pgbouncer 1.18, which does not track
/// protocol-level prepared statements) hands each transaction to any of its server connections, where a
/// name prepared on another means nothing: there, every statement is sent with its text each time, as an
/// unnamed statement, in the same round trip as its execution — the parameter types the server described
/// are still kept per statement, so integers are checked against them before they are sent.
public struct PreparedStatements: Sendable, Hashable, CustomStringConvertible {
    enum Mode: Sendable, Hashable { case automatic, named, unnamed }
    let mode: Mode

    /// Named, unless the connection is found to go through a pooler: its backend process ID (from the
    /// startup handshake) is then not the one the server reports (`pg_backend_pid()`), as poolers answer the
    /// handshake themselves. One round trip per new connection.
    public static let automatic = PreparedStatements(mode: .automatic)
    /// Always named (no check at connect: for a direct connection, or a pooler in session mode).
    public static let named = PreparedStatements(mode: .named)
    /// Always unnamed (for a pooler in transaction or statement mode).
    public static let unnamed = PreparedStatements(mode: .unnamed)

    public var description: String {
        switch mode {
        case .automatic: "automatic"
        case .named: "named"
        case .unnamed: "unnamed"
        }
    }
}
