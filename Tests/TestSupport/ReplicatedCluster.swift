// A primary and a streaming standby of a test's own (scripts/pg-replicated.sh), for failover: a fresh pair
// per test, since a promotion changes the topology for good.

/// A throw-away primary with one streaming standby. Its methods block (they wait for `pg_ctl`): call them
/// off the loop.
public final class ReplicatedCluster: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// `postgresql://postgres@127.0.0.1:PRIMARY,127.0.0.1:STANDBY/postgres`.
    public let url: String
    public let primaryPort: Int
    public let standbyPort: Int
    private let process: ScriptProcess

    /// Makes and starts the pair (initdb, pg_basebackup -R, both started, streaming): a few seconds.
    public init() throws(Failure) {
        do {
            process = try ScriptProcess(script: "pg-replicated.sh")
        } catch {
            throw Failure(description: "scripts/pg-replicated.sh: \(error)")
        }
        var fields: [String: String] = [:]
        while let line = process.readLine() {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            if parts[0] == "error" { throw Failure(description: "scripts/pg-replicated.sh: \(parts[1])") }
            fields[parts[0]] = parts[1]
            if parts[0] == "url" { break }
        }
        guard let url = fields["url"], let primary = fields["primary"].flatMap(Int.init), let standby = fields["standby"].flatMap(Int.init)
        else { throw Failure(description: "scripts/pg-replicated.sh could not start a primary and a standby") }
        self.url = url
        primaryPort = primary
        standbyPort = standby
    }

    /// `pg_ctl stop -m immediate` on the primary.
    public func stopPrimary() throws(Failure) { try command("stop-primary") }

    /// `pg_ctl promote` on the standby, waiting until it takes writes.
    public func promote() throws(Failure) { try command("promote") }

    /// Stops and deletes both servers.
    public func finish() { process.finish() }

    private func command(_ line: String) throws(Failure) {
        do {
            try process.writeLine(line)
        } catch {
            throw Failure(description: "scripts/pg-replicated.sh: \(error)")
        }
        guard let answer = process.readLine() else { throw Failure(description: "scripts/pg-replicated.sh ended") }
        guard answer == "ok" else { throw Failure(description: "scripts/pg-replicated.sh, \(line): \(answer)") }
    }
}
