// The PostgreSQL server the tests use: the one named by ANYRUNTIME_PG_URL, or a throw-away cluster started
// once per test process by scripts/with-postgres.sh — the same helper the demo and the benchmarks use — and
// stopped when the process ends.
#if canImport(Glibc)
import Glibc
#endif
import Runtime

public enum TestPostgres {
    /// Why no server could be had.
    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    /// The server's URL (`postgresql://user@host:port/db`), starting a throw-away server on first use.
    ///
    /// - Throws: ``Unavailable`` saying why — the tests that need the server then fail with that message;
    ///   they never skip.
    public static func url() throws(Unavailable) -> String { try server.get() }

    /// The server itself when the tests run through a connection pooler (`scripts/with-pgbouncer.sh` sets
    /// `ANYRUNTIME_PG_DIRECT_URL`), for the tests whose subject is a server session (a backend terminated, a
    /// session setting, the statements a session prepared); else ``url()``.
    public static func directURL() throws(Unavailable) -> String {
        if let direct = getenv("ANYRUNTIME_PG_DIRECT_URL").map({ String(cString: $0) }), !direct.isEmpty { return direct }
        return try url()
    }

    /// Whether the tests run through a connection pooler in transaction mode (`scripts/with-pgbouncer.sh`).
    public static var isPooled: Bool {
        getenv("ANYRUNTIME_PG_DIRECT_URL").map { String(cString: $0) }.map { !$0.isEmpty } ?? false
    }

    private static let server: Result<String, Unavailable> = {
        if let url = getenv("ANYRUNTIME_PG_URL").map({ String(cString: $0) }), !url.isEmpty { return .success(url) }
        return startThrowAwayServer()
    }()

    /// Runs `scripts/with-postgres.sh` with a command that prints the URL and then waits for its input to
    /// end, which it does when this process ends; the script then stops and deletes the cluster.
    private static func startThrowAwayServer() -> Result<String, Unavailable> {
        let process: ScriptProcess
        do {
            process = try ScriptProcess(script: "with-postgres.sh", ["bash", "-c", "echo \"URL=$ANYRUNTIME_PG_URL\"; cat >/dev/null"])
        } catch {
            return .failure(Unavailable(description: "no PostgreSQL server: ANYRUNTIME_PG_URL is not set and \(error)"))
        }
        keptAlive.withLock { $0.append(process) }
        // Its output up to the URL line (initdb and start-up take a few seconds).
        while let line = process.readLine() {
            if line.hasPrefix("URL=") { return .success(String(line.dropFirst(4))) }
        }
        return .failure(Unavailable(description:
            "no PostgreSQL server: ANYRUNTIME_PG_URL is not set and scripts/with-postgres.sh could not start a throw-away "
            + "one (its messages are above; install the postgresql package, or set ANYRUNTIME_PG_URL=postgresql://user@host:port/db)"))
    }

    /// The scripts serving this process's servers: their pipes stay open until it ends.
    private static let keptAlive = Locked<[ScriptProcess]>([])
}
