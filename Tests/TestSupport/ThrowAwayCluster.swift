// A PostgreSQL cluster of the test process's own, which the tests may stop and start again (the fault
// suite's server kills): scripts/pg-cluster.sh, driven through its stdin. Not the shared test server, which
// other tests use at the same time.

/// A throw-away PostgreSQL cluster the tests stop and restart, one per test process (made on first use,
/// stopped and deleted when the process ends).
public final class ThrowAwayCluster: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres` (TLS: `postgresql://alice@localhost:PORT/postgres`,
    /// without the password); the port stays the same across restarts.
    public let url: String
    /// TLS clusters: the folder with `ca.crt`, `other-ca.crt` (a CA that signed nothing), `client.crt` and
    /// `client.key` (for the role `certuser`).
    public let tlsDirectory: String?
    /// TLS clusters: alice's password (random, made with the cluster).
    public let password: String?
    private let process: ScriptProcess

    /// The process's cluster, started on first use.
    public static func shared() throws(Failure) -> ThrowAwayCluster { try cluster.get() }

    /// The process's TLS-only, SCRAM-only cluster (scripts/pg-cluster.sh --tls), started on first use.
    public static func sharedTLS() throws(Failure) -> ThrowAwayCluster { try tlsCluster.get() }

    /// The process's cluster for a test that loads a server so heavily that tests beside it would miss their
    /// real-time bounds on a server it shared with them, started on first use; no test stops it. (The
    /// cancellation torture sends about 2,000 cancel requests within seconds, each a process the postmaster
    /// forks one after another: beside it, a cancel request to the shared server took up to 3.5 s here, and
    /// more than the 5 s clean-up bound on a loaded CI machine.)
    public static func sharedForLoad() throws(Failure) -> ThrowAwayCluster { try loadCluster.get() }

    /// A cluster of the caller's own (not shared), for a test that must stop and start it while other
    /// suites use theirs; ``finish()`` deletes it. Blocks for a few seconds (initdb).
    public static func make() throws(Failure) -> ThrowAwayCluster { try start([]).get() }

    /// Stops and deletes the cluster (only for one from ``make()``). Blocks.
    public func finish() { process.finish() }

    private static let cluster = start([])
    private static let tlsCluster = start(["--tls"])
    private static let loadCluster = start([])

    private static func start(_ arguments: [String]) -> Result<ThrowAwayCluster, Failure> {
        do {
            let process = try ScriptProcess(script: "pg-cluster.sh", arguments)
            var fields: [String: String] = [:]
            while let line = process.readLine() {
                let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
                guard parts.count == 2 else { continue }
                if parts[0] == "error" { return .failure(Failure(description: "scripts/pg-cluster.sh: \(parts[1])")) }
                fields[parts[0]] = parts[1]
                if parts[0] == "url" { break }
            }
            guard let url = fields["url"] else {
                return .failure(Failure(description: "scripts/pg-cluster.sh \(arguments.joined(separator: " ")) could not start a cluster"))
            }
            return .success(ThrowAwayCluster(url: url, tlsDirectory: fields["tls"], password: fields["password"], process: process))
        } catch {
            return .failure(Failure(description: "scripts/pg-cluster.sh: \(error)"))
        }
    }

    private init(url: String, tlsDirectory: String?, password: String?, process: ScriptProcess) {
        self.url = url
        self.tlsDirectory = tlsDirectory
        self.password = password
        self.process = process
    }

    /// `pg_ctl stop` in `mode` (`immediate`: the postmaster kills every backend at once; `fast`: they roll
    /// back and close their connections), waiting until the server is down. Blocks: call it off the loop.
    public func stop(mode: String) throws(Failure) { try command("stop \(mode)") }

    /// Starts the server again on the same port, waiting until it accepts connections. Blocks.
    public func start() throws(Failure) { try command("start") }

    private func command(_ line: String) throws(Failure) {
        do {
            try process.writeLine(line)
        } catch {
            throw Failure(description: "scripts/pg-cluster.sh: \(error)")
        }
        guard let answer = process.readLine() else { throw Failure(description: "scripts/pg-cluster.sh ended") }
        guard answer == "ok" else { throw Failure(description: "scripts/pg-cluster.sh, \(line): \(answer)") }
    }
}
