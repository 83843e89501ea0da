import Runtime
import SQLAsync
import TestSupport
import Testing

/// Read routing on a real primary and streaming standby of the test's own (scripts/pg-replicated.sh): reads go
/// to the standby and writes to the primary (`pg_is_in_recovery()` says which answered), an unreachable
/// standby and a lagging one (its replay paused) are skipped, and a scope's reads see its own writes.
@Suite("Read routing to a standby", .serialized, .limit(minutes: 3))
struct ClusterReadRoutingTests {
    @Test("reads on the standby, writes on the primary; lagging or unreachable standbys skipped; read-your-writes",
          arguments: TestBackend.selected)
    func routing(_ backend: TestBackend) async throws {
        try await backend.run {
            let cluster = try await Runtime.runBlocking { try ReplicatedCluster() }
            do {
                try await Self.run(cluster)
            } catch {
                try? await Runtime.runBlocking { cluster.finish() }
                throw error
            }
            try await Runtime.runBlocking { cluster.finish() }
        }
    }

    static func run(_ cluster: ReplicatedCluster) async throws {
        let primary = "postgresql://postgres@127.0.0.1:\(cluster.primaryPort)/postgres"
        let standby = "postgresql://postgres@127.0.0.1:\(cluster.standbyPort)/postgres"
        // Nothing listens on port 1: refused at once.
        var routing = try ReadRouting(standbys: ["postgresql://postgres@127.0.0.1:1/postgres", standby])
        routing.maxLag = .seconds(1)
        routing.checkInterval = .milliseconds(100)
        let engine = try Engine(primary, logger: quietLogger, readRouting: routing)
        routing.maxLag = .seconds(600)
        let patient = try Engine(primary, logger: quietLogger, readRouting: routing)
        let direct = try Engine(standby, logger: quietLogger)
        let inRecovery: SQL = "SELECT pg_is_in_recovery()"

        try await engine.begin { try await $0.execute("CREATE TABLE routed (id int PRIMARY KEY)") }
        try await waitForReplay(primary: engine, standby: direct)

        // Reads on the standby (the unreachable one skipped), writes on the primary.
        for _ in 0..<4 {
            #expect(try await engine.read { try await $0.execute(inRecovery).scalar(Bool.self) } == true)
        }
        #expect(try await engine.begin(readOnly: true) { try await $0.execute(inRecovery).scalar(Bool.self) } == true)
        #expect(try await engine.withSession(readOnly: true) { try await $0.connection.execute(inRecovery).scalar(Bool.self) } == true)
        #expect(try await engine.begin { try await $0.execute(inRecovery).scalar(Bool.self) } == false)
        #expect(try await engine.withSession { try await $0.connection.execute(inRecovery).scalar(Bool.self) } == false)

        // Replay paused: a scope's read sees its write (on the primary); a plain read on the standby does not.
        try await direct.withConnection { connection in
            try await connection.execute("SELECT pg_wal_replay_pause()")
            // A pause is requested, then taken between two records.
            for _ in 0..<400 where try await connection.execute("SELECT pg_get_wal_replay_pause_state()").scalar(String.self) != "paused" {
                try await connection.execute("SELECT pg_sleep(0.025)")
            }
        }
        let scope = patient.readYourWrites()
        try await scope.begin { try await $0.execute("INSERT INTO routed VALUES (2)") }
        let seen = try await scope.read { connection in
            (try await connection.execute("SELECT count(*) FROM routed WHERE id = 2").scalar(Int.self),
             try await connection.execute(inRecovery).scalar(Bool.self))
        }
        #expect(seen.0 == 1 && seen.1 == false, "\(seen)")
        let stale = try await patient.read { connection in
            (try await connection.execute("SELECT count(*) FROM routed WHERE id = 2").scalar(Int.self),
             try await connection.execute(inRecovery).scalar(Bool.self))
        }
        #expect(stale.0 == 0 && stale.1 == true, "a plain read goes to the standby, which has not replayed the write")

        // Lagging more than a second behind: skipped, the primary serves the read.
        try await direct.withConnection { connection in
            for _ in 0..<200 {
                let lag = try await connection.execute(
                    "SELECT EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8").scalar(Double.self) ?? 0
                if lag > 1.5 { break }
                try await connection.execute("SELECT pg_sleep(0.05)")
            }
        }
        try await Runtime.sleep(for: .milliseconds(150))  // the last readings are stale now
        #expect(try await engine.read { try await $0.execute(inRecovery).scalar(Bool.self) } == false)

        // Replay resumed and caught up: the standby serves reads again, the scope's included.
        try await direct.withConnection { try await $0.execute("SELECT pg_wal_replay_resume()") }
        try await waitForReplay(primary: engine, standby: direct)
        try await Runtime.sleep(for: .milliseconds(150))
        #expect(try await engine.read { try await $0.execute(inRecovery).scalar(Bool.self) } == true)
        let caughtUp = try await scope.read { connection in
            (try await connection.execute("SELECT count(*) FROM routed WHERE id = 2").scalar(Int.self),
             try await connection.execute(inRecovery).scalar(Bool.self))
        }
        #expect(caughtUp.0 == 1 && caughtUp.1 == true)

        // No standby reachable and no fallback: a typed error.
        var strict = try ReadRouting(standbys: ["postgresql://postgres@127.0.0.1:1/postgres"])
        strict.fallbackToPrimary = false
        let strictEngine = try Engine(primary, logger: quietLogger, readRouting: strict)
        await #expect { try await strictEngine.read { _ in } } throws: { ($0 as? SQLError)?.kind == .connection }

        for engine in [engine, patient, direct, strictEngine] { await engine.dispose() }
    }

    /// Waits (server-side sleeps: real time on every backend) until the standby has replayed everything the
    /// primary has written so far.
    static func waitForReplay(primary: Engine, standby: Engine) async throws {
        let target = try await primary.withConnection { try await $0.execute("SELECT pg_current_wal_insert_lsn()::text").scalar(String.self) } ?? ""
        let replayed = try await standby.withConnection { connection in
            for _ in 0..<400 {
                if try await connection.execute("SELECT pg_last_wal_replay_lsn() >= \(target)::pg_lsn").scalar(Bool.self) == true { return true }
                try await connection.execute("SELECT pg_sleep(0.025)")
            }
            return false
        }
        guard replayed else { throw SQLError(.timeout, "the standby did not replay the primary's writes within 10 s") }
    }
}
