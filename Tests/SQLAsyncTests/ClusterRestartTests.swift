import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// A real server killed and started again, on a cluster of the test process's own (scripts/pg-cluster.sh):
/// `pg_ctl stop -m immediate` kills every backend at once, mid-query. On every backend: the query in flight
/// and the calls made while the server is down get typed connection errors at once, the pool recovers when
/// the server is back, and nothing is left behind.
@Suite("A server killed and restarted", .serialized, .limit(minutes: 3))
struct ClusterRestartTests {
    @Test("an immediate stop mid-query: typed errors at once; after the restart the pool recovers; nothing leaks",
          arguments: TestBackend.selected)
    func immediateStopAndRestart(_ backend: TestBackend) async throws {
        try await backend.run {
            // Made off the loop (initdb takes seconds), and started again if the test stops half-way.
            let cluster = try await Runtime.runBlocking { try ThrowAwayCluster.shared() }
            var configuration = PoolConfiguration()
            configuration.size = 3
            configuration.overflow = 0
            let engine = try Engine(cluster.url, pool: configuration, logger: quietLogger)
            do {
                try await Self.stopAndRestart(cluster, engine, configuration, backend)
            } catch {
                _ = try? await Runtime.runBlocking { try cluster.start() }
                await engine.dispose()
                throw error
            }
        }
    }

    static func stopAndRestart(_ cluster: ThrowAwayCluster, _ engine: Engine, _ configuration: PoolConfiguration, _ backend: TestBackend) async throws {
        let runtime = try Runtime.current
        // Three connections open and back in the pool.
        try await Runtime.withTaskGroup { group in
            for _ in 0..<3 {
                try group.startSoon {
                    try await engine.withConnection { connection in
                        _ = try await connection.execute("SELECT 1")
                        try await Runtime.sleep(for: .milliseconds(20))  // hold it, so that three are opened
                    }
                }
            }
        }
        #expect(try engine.poolStatistics().open == 3)

        // A query in flight when the server dies.
        let outcome = Recorder<String>()
        var stopped = runtime.now
        try await Runtime.withTaskGroup { group in
            try group.startSoon {
                do {
                    _ = try await engine.withConnection { try await $0.execute("SELECT pg_sleep(60)") }
                    outcome.append("returned")
                } catch let error as SQLError {
                    outcome.append("\(error.kind)")
                }
            }
            try await Runtime.waitAllTasksBlocked()  // the query is sent, its task waits on the socket
            stopped = runtime.now
            try await Runtime.runBlocking { try cluster.stop(mode: "immediate") }
        }
        let inFlight = stopped.duration(to: runtime.now)
        if backend != .virtual && !TestBuild.isSanitized {
            // Typed at once: the stop itself takes a moment; no timeout had to expire.
            #expect(inFlight < .seconds(5), "the caller waited \(inFlight)")
        }
        #expect(outcome.values == ["connection"], "the query in flight: \(outcome.values)")

        // While the server is down: connection errors, at once (the port refuses).
        for _ in 0..<4 {
            await #expect {
                try await engine.withConnection { try await $0.execute("SELECT 1") }
            } throws: { ($0 as? SQLError)?.kind == .connection }
        }

        // Back up: no call fails. The connection error of the query in flight made the pool check every
        // connection that was idle through it before handing it out, so dead ones are replaced unseen.
        try await Runtime.runBlocking { try cluster.start() }
        var failures: [String] = []
        for _ in 0..<8 {
            do {
                #expect(try await engine.withConnection { try await $0.execute("SELECT 41 + 1").scalar(Int.self) } == 42)
            } catch {
                failures.append("\(error)")
            }
        }
        print("[restart] \(backend): the query in flight ended \(inFlight) after the stop began; \(failures.count) calls failed after the restart")
        #expect(failures.isEmpty, "after the restart: \(failures)")
        for _ in 0..<5 {
            #expect(try await engine.withConnection { try await $0.execute("SELECT 1").scalar(Int.self) } == 1)
        }
        let statistics = try engine.poolStatistics()
        #expect(statistics.open == statistics.idle && statistics.waiting == 0, "\(statistics)")
        await engine.dispose()
        try await FaultTests.expectNothingLeft("after a server restart")
    }

    @Test("with prePing, no call fails after the restart: dead idle connections are replaced before use",
          arguments: TestBackend.selected)
    func prePingAfterRestart(_ backend: TestBackend) async throws {
        try await backend.run {
            let cluster = try await Runtime.runBlocking { try ThrowAwayCluster.shared() }
            var configuration = PoolConfiguration()
            configuration.size = 2
            configuration.overflow = 0
            configuration.prePing = true
            let engine = try Engine(cluster.url, pool: configuration, logger: quietLogger)
            try await Runtime.withTaskGroup { group in
                for _ in 0..<2 {
                    try group.startSoon {
                        try await engine.withConnection { connection in
                            _ = try await connection.execute("SELECT 1")
                            try await Runtime.sleep(for: .milliseconds(20))
                        }
                    }
                }
            }
            try await Runtime.runBlocking {
                defer { _ = try? cluster.start() }  // (a no-op answer "error" when it is already up)
                try cluster.stop(mode: "immediate")
            }
            for _ in 0..<6 {
                #expect(try await engine.withConnection { try await $0.execute("SELECT 2").scalar(Int.self) } == 2)
            }
            await engine.dispose()
            try await FaultTests.expectNothingLeft("after a restart with prePing")
        }
    }
}
