import Runtime
@testable import SQLAsync
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Faults on a real server, made by a TCP proxy between the driver and PostgreSQL: a server that stops
/// answering, one that answers slowly, connections cut or reset. Each on every backend: the caller gets a typed
/// error within its deadline plus a bounded margin, the pool recovers, and nothing is left behind (blocking
/// tokens, system tasks, watched fds, timers).
@Suite("Faults through a proxy", .serialized, .limit(minutes: 2), .realTimeBounds)
struct FaultTests {
    /// A proxy in front of the test server, and the URL through it.
    static func proxied() throws -> (FaultProxy, String) {
        let server = try postgresURL()
        // The proxy forwards to 127.0.0.1 only.
        let port = try #require(server.port, "the test server's URL has no port")
        try #require(server.host == "127.0.0.1", "the test server is not on 127.0.0.1: \(server)")
        let proxy = try FaultProxy(targetPort: port)
        return (proxy, try proxy.url(from: try postgresURLString()))
    }

    static func configuration(grace: Duration = .milliseconds(300)) -> PoolConfiguration {
        var configuration = PoolConfiguration()
        configuration.size = 2
        configuration.overflow = 0
        configuration.cancellationGrace = grace
        return configuration
    }

    /// Waits (runtime sleeps, virtual time too) until the run has nothing left in flight: no system task, no
    /// blocking job or token, no watched fd, no timer but the sleep's own.
    static func expectNothingLeft(_ context: String) async throws {
        let runtime = try Runtime.current
        var diagnostics = runtime.backend.diagnostics()
        for _ in 0..<300 {
            diagnostics = runtime.backend.diagnostics()
            if runtime.systemTaskCount == 0, diagnostics.blockingJobsInFlight == 0, diagnostics.watchedDescriptors == 0,
                diagnostics.pendingTimers == 0, runtime.defaultBlockingLimiter.borrowedTokens == 0
            { return }
            try await runtime.sleep(for: .milliseconds(10))
        }
        Issue.record("\(context): left behind: \(runtime.systemTaskCount) system tasks, \(diagnostics)")
    }

    @Test("a 200 ms timeout against a server that stops answering returns at the deadline plus the grace, typed; the pool recovers",
          arguments: TestBackend.selected, [Duration.milliseconds(100), PoolConfiguration().cancellationGrace])
    func silentServer(_ backend: TestBackend, grace: Duration) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let engine = try Engine(url, pool: Self.configuration(grace: grace), logger: quietLogger)
        try await backend.run {
            let runtime = try Runtime.current
            do {
                #expect(try await engine.withConnection { try await $0.execute("SELECT 1").scalar(Int.self) } == 1)
            } catch {
                Issue.record("through the proxy (which closed: \(proxy.closures)): \(error)")
                throw error
            }
            #expect(proxy.accepted > 0, "the engine did not connect through the proxy")
            proxy.set(.stall)
            let start = runtime.now
            await #expect {
                try await engine.withConnection { connection in
                    try await failAfter(.milliseconds(200)) { try await connection.execute("SELECT 2") }
                }
            } throws: { ($0 as? SQLError)?.kind == .statementInDoubt }
            let elapsed = start.duration(to: runtime.now)
            print("[faults] \(backend), grace \(grace): a 200 ms timeout against a silent server returned after \(elapsed)")
            // The deadline plus the configured grace (not the default 1 s, nor nothing), and a margin.
            #expect(elapsed >= .milliseconds(200) + grace && elapsed < .milliseconds(200) + grace + .milliseconds(600),
                    "the caller waited \(elapsed)")
            // Nothing held: the cancel request to the silent server is a system task, not a blocking token.
            #expect(runtime.defaultBlockingLimiter.borrowedTokens == 0)
            proxy.set(.pass)
            #expect(try await engine.withConnection { try await $0.execute("SELECT 41 + 1").scalar(Int.self) } == 42)
            await engine.dispose()
            // The cancel request to the silent proxy was cut when traffic resumed; nothing is left.
            proxy.cutAll()
            try await Self.expectNothingLeft("after a silent server")
        }
    }

    @Test("a transaction whose statement is in doubt reports the cancellation: closing the connection rolled it back",
          arguments: TestBackend.selected)
    func inDoubtInsideTransaction(_ backend: TestBackend) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let engine = try Engine(url, pool: Self.configuration(), logger: quietLogger)
        let direct = Engine(url: try postgresURL(), logger: quietLogger)
        let table = "fault_tx_\(backend)"
        try await backend.run {
            try await direct.withConnection { connection in
                try await connection.execute(.unsafeRaw("DROP TABLE IF EXISTS \(table)"))
                try await connection.execute(.unsafeRaw("CREATE TABLE \(table) (id int)"))
            }
            await #expect {
                try await failAfter(.milliseconds(200)) {
                    try await engine.withConnection { connection in
                        try await connection.withTransaction { connection in
                            try await connection.execute(.unsafeRaw("INSERT INTO \(table) VALUES (1)"))
                            proxy.set(.stall)
                            try await connection.execute(.unsafeRaw("INSERT INTO \(table) VALUES (2)"))
                        }
                    }
                }
            } throws: { $0 is TimeoutError }
            proxy.cutAll()
            proxy.set(.pass)
            // The server ends the session once the proxy cut it, rolling the transaction back.
            var rows = -1
            for _ in 0..<200 {
                rows = try await direct.withConnection { connection in
                    let open = try await connection.execute(.unsafeRaw(
                        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO \(table)%' AND pid <> pg_backend_pid()"
                    )).scalar(Int.self) ?? 0
                    return open > 0 ? -1 : try await connection.execute(.unsafeRaw("SELECT count(*) FROM \(table)")).scalar(Int.self) ?? -1
                }
                if rows >= 0 { break }
                try await Runtime.sleep(for: .milliseconds(20))
            }
            #expect(rows == 0, "a transaction reported as cancelled left \(rows) rows")
            await engine.dispose()
            await direct.dispose()
            try await Self.expectNothingLeft("after a transaction in doubt")
        }
    }

    @Test("a slow server (50 ms each way) is not mistaken for a silent one: a cancelled query reports exactly",
          arguments: TestBackend.selected)
    func slowServer(_ backend: TestBackend) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let engine = try Engine(url, pool: Self.configuration(grace: .seconds(2)), logger: quietLogger)
        try await backend.run {
            proxy.set(.delay(.milliseconds(50)))
            #expect(try await engine.withConnection { try await $0.execute("SELECT 3").scalar(Int.self) } == 3)
            await #expect {
                try await engine.withConnection { connection in
                    try await failAfter(.milliseconds(300)) { try await connection.execute("SELECT pg_sleep(30)") }
                }
            } throws: { $0 is TimeoutError }
            #expect(try await engine.withConnection { try await $0.execute("SELECT 4").scalar(Int.self) } == 4)
            await engine.dispose()
            try await Self.expectNothingLeft("after a slow server")
        }
    }

    @Test("a cancel request that reaches the server before its statement is dropped there; the one sent again cancels it, and the connection goes on",
          arguments: TestBackend.selected, [false, true])
    func cancelBeforeStatement(_ backend: TestBackend, _ noticeFirst: Bool) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let grace = Duration.seconds(8)
        let engine = try Engine(url, pool: Self.configuration(grace: grace), logger: quietLogger)
        try await backend.run {
            let runtime = try Runtime.current
            try await engine.withConnection { (connection: Connection) async throws in
                #expect(try await connection.execute("SELECT 1").scalar(Int.self) == 1)
                // The statement reaches the server late (1.2 s; 0.6 s when its NOTICE must come back, delayed as
                // much, before the request is due again 2 s after the first); the first cancel request, a
                // connection of its own, arrives at once, finds the session idle and is dropped by the server.
                proxy.delayOpenConnections(by: .milliseconds(noticeFirst ? 600 : 1200))
                let start = runtime.now
                // With a NOTICE first, the socket turns readable before the statement ends: that is no answer to
                // the cancel, and the request is sent again all the same.
                let statement: SQL = noticeFirst
                    ? "DO $$ BEGIN RAISE NOTICE 'sleeping'; PERFORM pg_sleep(30); END $$"
                    : "SELECT pg_sleep(30)"
                await #expect {
                    try await failAfter(.milliseconds(300)) { try await connection.execute(statement) }
                } throws: { $0 is TimeoutError }
                let elapsed = start.duration(to: runtime.now)
                #expect(elapsed < grace, "answered by a later cancel request, not given up after the grace: \(elapsed)")
                proxy.set(.pass)
                #expect(!connection.isBroken)
                #expect(try await connection.execute("SELECT 2").scalar(Int.self) == 2)
            }
            await engine.dispose()
            try await Self.expectNothingLeft("after a cancel sent again")
        }
    }

    @Test("connections cut or reset mid-query: a typed connection error at once, and the pool recovers",
          arguments: TestBackend.selected, [false, true])
    func cutAndReset(_ backend: TestBackend, _ reset: Bool) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let engine = try Engine(url, pool: Self.configuration(), logger: quietLogger)
        try await backend.run {
            #expect(try await engine.withConnection { try await $0.execute("SELECT 1").scalar(Int.self) } == 1)
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    await #expect {
                        try await engine.withConnection { try await $0.execute("SELECT pg_sleep(30)") }
                    } throws: { ($0 as? SQLError)?.kind == .connection }
                }
                try await Runtime.current.waitAllTasksBlocked(cushion: .milliseconds(50))
                for _ in 0..<200 where proxy.openConnections == 0 { try await Runtime.sleep(for: .milliseconds(5)) }
                if reset { proxy.resetAll() } else { proxy.cutAll() }
            }
            #expect(try await engine.withConnection { try await $0.execute("SELECT 5").scalar(Int.self) } == 5)
            await engine.dispose()
            try await Self.expectNothingLeft("after a \(reset ? "reset" : "cut")")
        }
    }

    @Test("41 connections to a silent server (one more than the blocking pool's tokens) starve nothing: blocking work and a new engine to a healthy server go on",
          arguments: TestBackend.selected)
    func silentServersStarveNothing(_ backend: TestBackend) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        var configuration = Self.configuration(grace: .milliseconds(100))
        configuration.size = 41
        let engine = try Engine(url, pool: configuration, logger: quietLogger)
        let healthy = Engine(url: try postgresURL(), logger: quietLogger)
        try await backend.run {
            let connections = try await (0..<41).asyncMap { _ in try await engine.connect() }
            proxy.set(.stall)
            try await Runtime.withTaskGroup { group in
                for connection in connections {
                    try group.startSoon {
                        await #expect {
                            try await failAfter(.milliseconds(100)) { try await connection.execute("SELECT 1") }
                        } throws: { ($0 as? SQLError)?.kind == .statementInDoubt }
                        await connection.close()
                    }
                }
            }
            // 41 cancel requests wait on the silent server meanwhile; none holds a blocking token.
            #expect(try Runtime.current.systemTaskCount > 0)
            #expect(try Runtime.current.defaultBlockingLimiter.totalTokens < 41)
            #expect(try await failAfter(.seconds(2)) { try await Runtime.runBlocking { 7 } } == 7)
            #expect(try await healthy.withConnection { try await $0.execute("SELECT 6").scalar(Int.self) } == 6)
            await engine.dispose()
            await healthy.dispose()
            // The run's end cancels the cancel requests still waiting: nothing holds it.
        }
    }
}

extension Sequence where Element: Sendable {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async throws -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
