// A PostgreSQL cluster of the test process's own, which the tests may stop and start again (the fault
// suite's server kills): scripts/pg-cluster.sh, driven through its stdin. Not the shared test server, which
// other tests use at the same time.

/// A throw-away PostgreSQL cluster the tests stop and restart, one per test process (made on first use,
/// stopped and deleted when the process ends).
public final class ThrowAwayCluster: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `postgresql://postgres@127.0.0.1:PORT/postgres`; the port stays the same across restarts.
    public let url: String
    private let process: ScriptProcess

    /// The process's cluster, started on first use.
    public static func shared() throws(Failure) -> ThrowAwayCluster { try cluster.get() }

    private static let cluster: Result<ThrowAwayCluster, Failure> = {
        do {
            let process = try ScriptProcess(script: "pg-cluster.sh")
            guard let line = process.readLine(), line.hasPrefix("url ") else {
                return .failure(Failure(description: "scripts/pg-cluster.sh could not start a cluster"))
            }
            return .success(ThrowAwayCluster(url: String(line.dropFirst(4)), process: process))
        } catch {
            return .failure(Failure(description: "scripts/pg-cluster.sh: \(error)"))
        }
    }()

    private init(url: String, process: ScriptProcess) {
        self.url = url
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
