import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// Failover on a real primary and streaming standby of the test's own (scripts/pg-replicated.sh): 32 tasks
/// write through a two-host URL with `target_session_attrs=read-write`; the primary is killed
/// (`pg_ctl stop -m immediate`) and the standby promoted (`pg_ctl promote`). Every error is a typed
/// connection error, and every task writes again soon after the promotion.
@Suite("Failover to a promoted standby", .serialized, .limit(minutes: 3))
struct ClusterFailoverTests {
    enum Phase: Sendable { case before, down, promoted }

    /// What the writers saw.
    final class Tally: Sendable {
        struct State {
            var phase = Phase.before
            var writes: [Int] = Array(repeating: 0, count: 32)
            var errors: [String: Int] = [:]
            /// Per task: when it first wrote after the promotion.
            var recovered: [RuntimeInstant?] = Array(repeating: nil, count: 32)
        }
        let state = Locked(State())
    }

    @Test("the primary killed under 32 writing tasks, the standby promoted: typed errors only, every task writes again within a bound",
          arguments: TestBackend.selected)
    func failover(_ backend: TestBackend) async throws {
        try await backend.run {
            let cluster = try await Runtime.runBlocking { try ReplicatedCluster() }
            do {
                try await Self.run(cluster, backend)
            } catch {
                try? await Runtime.runBlocking { cluster.finish() }
                throw error
            }
            try await Runtime.runBlocking { cluster.finish() }
        }
    }

    static func run(_ cluster: ReplicatedCluster, _ backend: TestBackend) async throws {
        let runtime = try Runtime.current
        var pool = PoolConfiguration()
        pool.size = 8
        pool.overflow = 0
        pool.checkoutTimeout = .seconds(60)
        // The standby first: read-write skips it until it is promoted, and the dead primary's port is then
        // never tried (once freed, any process may bind it — in the suite, another test's proxy did, and
        // stalled every connect there).
        let url = "postgresql://postgres@127.0.0.1:\(cluster.standbyPort),127.0.0.1:\(cluster.primaryPort)/postgres"
        let engine = try Engine(url + "?target_session_attrs=read-write&connect_timeout=5", pool: pool, logger: quietLogger)
        try await engine.withConnection { try await $0.execute("CREATE TABLE failover (id bigserial PRIMARY KEY, task int NOT NULL)") }
        // The table must have reached the standby before the primary goes. The wait is the server's
        // (pg_sleep, real time on every backend): under virtual time a Runtime.sleep takes none, and 200 of
        // them once ended before the standby had replayed anything — it was then promoted without the table,
        // and every writer failed forever.
        let standby = try Engine("postgresql://postgres@127.0.0.1:\(cluster.standbyPort)/postgres", logger: quietLogger)
        let replicated = try await standby.withConnection { connection in
            for _ in 0..<1_000 {
                let present = try await connection.execute("SELECT to_regclass('failover') IS NOT NULL").scalar(Bool.self)
                if present == true { return true }
                try await connection.execute("SELECT pg_sleep(0.01)")
            }
            return false
        }
        await standby.dispose()
        guard replicated else {
            Issue.record("the table did not reach the standby within 10 s")
            return
        }

        let tally = Tally()
        // Set once every task has written three times. (An event, not a sleeping poll: under virtual time
        // the clock stands still while the writers keep the server busy, so a sleep would never end.)
        let writing = Event()
        var stopped = runtime.now
        var promoted = runtime.now
        try await Runtime.withTaskGroup { group in
            for task in 0..<32 {
                try group.startSoon {
                    while true {
                        do {
                            try await engine.withConnection { try await $0.execute("INSERT INTO failover (task) VALUES (\(task))") }
                            let (done, allWriting) = tally.state.withLock { state -> (Bool, Bool) in
                                state.writes[task] += 1
                                let allWriting = (state.writes.min() ?? 0) >= 3
                                guard state.phase == .promoted else { return (false, allWriting) }
                                if state.recovered[task] == nil { state.recovered[task] = runtime.now }
                                return (true, allWriting)
                            }
                            if allWriting { writing.set() }
                            if done { return }
                        } catch let error as SQLError {
                            tally.state.withLock { $0.errors["\(error.kind)", default: 0] += 1 }
                            // Only a lost or refused connection is retried: anything else is a failure
                            // of its own, and retrying it would hang the test until its time limit.
                            guard error.kind == .connection else {
                                Issue.record("task \(task): \(error)")
                                if tally.state.withLock({ $0.phase }) == .before { writing.set() }
                                return
                            }
                            try await Runtime.sleep(for: .milliseconds(50))
                        }
                    }
                }
            }
            // Every task writing, then the primary goes.
            try await writing.wait()
            tally.state.withLock { $0.phase = .down }
            stopped = runtime.now
            try await Runtime.runBlocking { try cluster.stopPrimary() }
            try await Runtime.sleep(for: .milliseconds(300))  // writes fail meanwhile: no primary
            try await Runtime.runBlocking { try cluster.promote() }
            promoted = runtime.now
            tally.state.withLock { $0.phase = .promoted }
        }
        let state = tally.state.withLock { $0 }
        let lastRecovered = state.recovered.compactMap { $0 }.max() ?? promoted
        let afterPromotion = promoted.duration(to: lastRecovered)
        print("[failover] \(backend): errors \(state.errors.sorted { $0.key < $1.key }); every task wrote again \(afterPromotion) after the promotion (\(stopped.duration(to: lastRecovered)) after the primary was killed)")
        #expect(state.errors.keys.allSatisfy { $0 == "connection" }, "\(state.errors)")
        #expect(state.recovered.allSatisfy { $0 != nil })
        if backend != .virtual && !TestBuild.isSanitized {
            #expect(afterPromotion < .seconds(5), "the last task wrote again \(afterPromotion) after the promotion")
        }
        // The promoted standby is the primary now, and every task's write after the promotion is there.
        // (Writes the old primary acknowledged may be missing: replication is asynchronous and these
        // servers run with synchronous_commit off — PostgreSQL's trade, not the driver's.)
        let (tasks, inRecovery) = try await engine.withConnection { connection in
            (try await connection.execute("SELECT count(DISTINCT task) FROM failover").scalar(Int.self),
             try await connection.execute("SELECT pg_is_in_recovery()").scalar(Bool.self))
        }
        #expect(inRecovery == false)
        #expect(tasks == 32)
        await engine.dispose()
    }
}
