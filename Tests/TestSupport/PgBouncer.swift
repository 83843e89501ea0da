// A pgbouncer in transaction-pooling mode of a test's own (scripts/with-pgbouncer.sh), in front of the test
// server (or a throw-away one), with few server connections so that clients share them.

/// A pgbouncer of the test's own, stopped when ``finish()`` is called or the test process ends. Its
/// initializer blocks (it waits for the script): call it off the loop.
public final class PgBouncer: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The URL through pgbouncer.
    public let url: String
    /// The server behind it.
    public let directURL: String
    private let process: ScriptProcess

    /// Starts pgbouncer with `poolSize` server connections per database and user.
    public init(poolSize: Int) throws(Failure) {
        do {
            process = try ScriptProcess(script: "with-pgbouncer.sh", [
                "--pool-size", "\(poolSize)", "bash", "-c",
                "echo \"URL=$ANYRUNTIME_PG_URL\"; echo \"DIRECT=$ANYRUNTIME_PG_DIRECT_URL\"; cat >/dev/null",
            ])
        } catch {
            throw Failure(description: "scripts/with-pgbouncer.sh: \(error)")
        }
        var url: String?
        var direct: String?
        while url == nil || direct == nil, let line = process.readLine() {
            if line.hasPrefix("URL=") { url = String(line.dropFirst(4)) }
            if line.hasPrefix("DIRECT=") { direct = String(line.dropFirst(7)) }
        }
        guard let url, let direct, !url.isEmpty, !direct.isEmpty else {
            throw Failure(description: "scripts/with-pgbouncer.sh could not start pgbouncer (its messages are above)")
        }
        self.url = url
        directURL = direct
    }

    /// Stops pgbouncer (and the server, when the script started one).
    public func finish() { process.finish() }
}
