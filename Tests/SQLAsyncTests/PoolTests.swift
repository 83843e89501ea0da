import Runtime
@testable import SQLAsync
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Pool state machine")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<String, Int>

    @Test("opens up to size + overflow, then queues waiters in order")
    func limits() {
        var machine = Machine(size: 1, overflow: 1, maxAge: nil)
        guard case .open = machine.checkout(1, now: 0), case .open = machine.checkout(2, now: 0),
            case .wait = machine.checkout(3, now: 0), case .wait = machine.checkout(4, now: 0)
        else { Issue.record("unexpected actions"); return }
        #expect(machine.open == 2 && machine.waiters == [3, 4])
        // A connection coming back goes to the first waiter.
        guard case .handTo(3, let idle) = machine.release("a", openedAt: 0, healthy: true, now: 1) else {
            Issue.record("not handed to the first waiter"); return
        }
        #expect(idle.connection == "a")
        machine.withdraw(4)
        // Overflow connections close when they come back; the pool keeps `size`.
        guard case .close("b") = machine.release("b", openedAt: 0, healthy: true, now: 1),
            case .keep = machine.release("a", openedAt: 0, healthy: true, now: 2)
        else { Issue.record("overflow not closed"); return }
        #expect(machine.open == 1 && machine.idle.count == 1)
        guard case .use(let reused, _) = machine.checkout(5, now: 3) else { Issue.record("idle not reused"); return }
        #expect(reused.connection == "a")
    }

    @Test("a broken connection is closed and its slot goes to a waiter; a failed open passes the slot on")
    func brokenAndFailed() {
        var machine = Machine(size: 1, overflow: 0, maxAge: nil)
        _ = machine.checkout(1, now: 0)
        _ = machine.checkout(2, now: 0)
        guard case .closeAndOpenFor(2, "x") = machine.release("x", openedAt: 0, healthy: false, now: 1) else {
            Issue.record("broken connection not replaced for the waiter"); return
        }
        #expect(machine.open == 1)
        _ = machine.checkout(3, now: 1)
        #expect(machine.openFailed() == 3, "the slot did not pass to the next waiter")
        #expect(machine.openFailed() == nil)
        #expect(machine.open == 0)
    }

    @Test("connections past their age are recycled; disposal closes idle ones and fails waiters")
    func recycleAndDispose() {
        var machine = Machine(size: 2, overflow: 0, maxAge: 100)
        _ = machine.checkout(1, now: 0)
        _ = machine.release("old", openedAt: 0, healthy: true, now: 10)
        guard case .closeAndRetry("old") = machine.checkout(2, now: 200) else {
            Issue.record("an old connection was reused"); return
        }
        _ = machine.checkout(3, now: 200)
        _ = machine.checkout(4, now: 200)
        _ = machine.checkout(5, now: 200)
        let (close, fail) = machine.dispose()
        #expect(close.isEmpty && fail == [5])
        guard case .fail = machine.checkout(6, now: 300) else { Issue.record("a disposed pool served"); return }
        guard case .close("late") = machine.release("late", openedAt: 200, healthy: true, now: 300) else {
            Issue.record("a connection returned after disposal was kept"); return
        }
    }
}

/// Databases that can hold several connections: PostgreSQL, and SQLite in a file.
enum PoolDatabase: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqliteFile, postgresql
    var description: String { rawValue }

    /// - Parameter applicationName: PostgreSQL: the `application_name` of the engine's sessions, to tell them
    ///   apart in `pg_stat_activity` from those of tests running at the same time.
    /// `direct`: the server itself even through a pooler (a test that terminates a backend would otherwise
    /// kill a server connection the pooler shares with other tests). `server`: another PostgreSQL server's URL
    /// to use instead of the tests' shared one.
    func withEngine(
        _ pool: PoolConfiguration, applicationName: String? = nil, direct: Bool = false, server: String? = nil,
        _ body: (Engine) async throws -> Void
    ) async throws {
        switch self {
        case .postgresql:
            let url = try server.map { try DatabaseURL($0) } ?? postgresURL(direct: direct)
            guard let applicationName else { return try await body(Engine(url: url, pool: pool, logger: quietLogger)) }
            let named = "postgresql://\(url.user ?? "postgres")@\(url.host ?? "127.0.0.1"):\(url.port ?? 5432)/"
                + "\(url.databaseName ?? "postgres")?application_name=\(applicationName)"
            try await body(Engine(url: try DatabaseURL(named), pool: pool, logger: quietLogger))
        case .sqliteFile:
            var template = Array("/tmp/anyruntime-pool-XXXXXX".utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ buffer in buffer.baseAddress.flatMap { mkdtemp($0) } }) else {
                throw SQLError(.connection, "mkdtemp failed")
            }
            let directory = String(cString: made)
            let path = directory + "/pool.db"
            defer {
                for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
                rmdir(directory)
            }
            try await body(Engine(url: try DatabaseURL("sqlite:///" + path), pool: pool, logger: quietLogger))
        }
    }
}

@Suite("Pool", .limit(minutes: 1))
struct PoolTests {
    @Test("connections are reused; size + overflow bound them; the checkout timeout is a typed error",
          arguments: TestBackend.selected, PoolDatabase.allCases)
    func limitsAndTimeout(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 1
        configuration.overflow = 1
        configuration.checkoutTimeout = .milliseconds(500)  // long enough for the waiter below under load
        try await database.withEngine(configuration) { engine in
            try await backend.run {
                let first = try await engine.connect()
                await first.close()
                let again = try await engine.connect()
                #expect(try engine.poolStatistics().open == 1, "the idle connection was not reused")
                let second = try await engine.connect()
                #expect(try engine.poolStatistics().open == 2)
                do {
                    _ = try await engine.connect()
                    Issue.record("a third connection was handed out")
                } catch let error as SQLError {
                    #expect(error.kind == .poolTimeout)
                }
                // A timeout of its own, for one call: shorter than the pool's, and named in the error.
                do {
                    _ = try await engine.connect(timeout: .milliseconds(20))
                    Issue.record("a third connection was handed out")
                } catch let error as SQLError {
                    #expect(error.kind == .poolTimeout && error.message.contains("0.02 seconds"), "\(error)")
                    // It says why: every connection in use, and for how long; nobody else waiting; no failed connect.
                    #expect(error.message.contains("2 of 2 open connections in use (the longest for "), "\(error)")
                    #expect(error.message.contains("no other caller waiting") && !error.message.contains("failed"), "\(error)")
                }
                await #expect { _ = try await engine.connect(timeout: .milliseconds(-1)) } throws: {
                    ($0 as? SQLError)?.kind == .misuse
                }
                // A waiter is served as soon as a connection comes back.
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        let third = try await engine.connect()
                        #expect(try await third.execute("SELECT \(1)").scalar(Int.self) == 1)
                        await third.close()
                    }
                    try await Runtime.waitAllTasksBlocked()  // the third checkout waits for a connection
                    await second.close()
                }
                await again.close()
                let statistics = try engine.poolStatistics()
                #expect(statistics.open == 1 && statistics.idle == 1 && statistics.waiting == 0)
                await engine.dispose()
                await #expect(throws: SQLError.self) { _ = try await engine.connect() }
            }
        }
    }

    @Test("a pool configuration that cannot work is a typed error naming the setting, never quietly changed",
          arguments: TestBackend.selected, PoolDatabase.allCases)
    func invalidConfiguration(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var settings: [(String, (inout PoolConfiguration) -> Void)] = [
            ("size", { $0.size = 0 }), ("overflow", { $0.overflow = -1 }),
            ("checkoutTimeout", { $0.checkoutTimeout = .milliseconds(-1) }),
            ("cancellationGrace", { $0.cancellationGrace = .seconds(-1) }),
            ("connectTimeout", { $0.connectTimeout = .zero }), ("statementTimeout", { $0.statementTimeout = .seconds(-2) }),
        ]
        settings.append(("recycle", { $0.recycle = .zero }))
        settings.append(("size + overflow", { $0.overflow = .max }))
        for (name, change) in settings {
            var configuration = PoolConfiguration()
            change(&configuration)
            // An engine made from a URL string refuses it at once.
            #expect(throws: SQLError.self, "\(name)") { try Engine("sqlite::memory:", pool: configuration) }
            // One made from a parsed URL (which cannot throw) refuses every checkout, before connecting.
            try await database.withEngine(configuration) { engine in
                try await backend.run {
                    await Self.expectCheckoutRefused(engine, .misuse, naming: name)
                    let open = try engine.poolStatistics().open
                    #expect(open == 0)
                    // A listener's connection is the engine's too.
                    if database == .postgresql {
                        await #expect { try await engine.listen(to: ["refused"]) { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
                    }
                }
            }
        }
        // Read routing on a database that has no standbys: refused the same two ways.
        if database == .sqliteFile {
            let routing = try ReadRouting(standbys: ["postgresql://postgres@127.0.0.1:1/postgres"])
            #expect(throws: SQLError.self) { try Engine("sqlite::memory:", readRouting: routing) }
            let engine = Engine(url: try DatabaseURL("sqlite::memory:"), readRouting: routing)
            try await backend.run { await Self.expectCheckoutRefused(engine, .invalidURL, naming: "read routing") }
        }
        // The standbys' pool is checked the same two ways (a connect to port 1 would fail otherwise).
        if database == .postgresql {
            var routing = try ReadRouting(standbys: ["postgresql://postgres@127.0.0.1:1/postgres"])
            routing.pool.size = 0
            #expect(throws: SQLError.self) { try Engine("postgresql://postgres@127.0.0.1:1/postgres", readRouting: routing) }
            let engine = Engine(url: try DatabaseURL("postgresql://postgres@127.0.0.1:1/postgres"), readRouting: routing)
            try await backend.run { await Self.expectCheckoutRefused(engine, .misuse, naming: "size") }
        }
        // Zero where zero means something stays allowed: no overflow, no waiting for a free connection, no grace.
        var edge = PoolConfiguration()
        edge.overflow = 0
        edge.checkoutTimeout = .zero
        edge.cancellationGrace = .zero
        try edge.validate()
    }

    /// Expects a checkout from `engine` to fail with `kind`, the error naming `setting`.
    static func expectCheckoutRefused(_ engine: Engine, _ kind: SQLError.Kind, naming setting: String) async {
        await #expect {
            _ = try await engine.connect()
        } throws: { error in
            guard let error = error as? SQLError else { return false }
            return error.kind == kind && error.message.contains(setting)
        }
    }

    @Test("a connection the server killed fails with a typed error and is replaced", arguments: TestBackend.selected)
    func serverGoesAway(_ backend: TestBackend) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 2
        let engine = Engine(url: try postgresURL(direct: true), pool: configuration, logger: quietLogger)
        try await backend.run {
            let victim = try await engine.connect()
            let pid = try await victim.execute("SELECT pg_backend_pid()").scalar(Int32.self)
            try await engine.withConnection { admin in
                // Integers are bound as int8; the function takes int4.
                try await admin.execute("SELECT pg_terminate_backend(\(pid)::int)")
            }
            do {
                try await victim.execute("SELECT 1")
                Issue.record("a query on a terminated backend succeeded")
            } catch let error as SQLError {
                #expect(error.kind == .connection)
            }
            #expect(victim.isBroken)
            await victim.close()  // discarded, not pooled
            let fresh = try await engine.connect()
            #expect(try await fresh.execute("SELECT \(7)").scalar(Int.self) == 7)
            await fresh.close()
            await engine.dispose()
        }
    }
}

@Suite("Server going away", .limit(minutes: 1))
struct ServerGoesAwayTests {
    @Test("a backend killed in the middle of a query: a typed connection error, and the pool recovers",
          arguments: TestBackend.selected)
    func killedMidQuery(_ backend: TestBackend) async throws {
        let engine = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            let victim = try await engine.connect()
            let pid = try await victim.execute("SELECT pg_backend_pid()").scalar(Int32.self) ?? 0
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    do {
                        try await victim.execute("SELECT pg_sleep(30)")
                        Issue.record("the killed query returned")
                    } catch let error as SQLError {
                        #expect(error.kind == .connection, "\(error)")
                    }
                }
                try await engine.withConnection { admin in
                    // Wait until the query runs, then end its session.
                    var running = false
                    for _ in 0..<500 where !running {
                        running = try await admin.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid)::int AND state = 'active'").scalar(Int.self) == 1
                        if !running { try await Runtime.sleep(for: .milliseconds(10)) }
                    }
                    #expect(running)
                    try await admin.execute("SELECT pg_terminate_backend(\(pid)::int)")
                }
            }
            #expect(victim.isBroken)
            await victim.close()
            #expect(try await engine.withConnection { try await $0.execute("SELECT \(8)").scalar(Int.self) } == 8)
            await engine.dispose()
        }
    }

    @Test("with pre-ping, an idle connection whose backend died is replaced before it is handed out",
          arguments: TestBackend.selected)
    func prePingReplacesDeadConnections(_ backend: TestBackend) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 1
        configuration.overflow = 1
        configuration.prePing = true
        let engine = Engine(url: try postgresURL(direct: true), pool: configuration, logger: quietLogger)
        try await backend.run {
            let pid = try await engine.withConnection { try await $0.execute("SELECT pg_backend_pid()").scalar(Int32.self) } ?? 0
            // Another engine ends the idle connection's session.
            let admin = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
            try await admin.withConnection { connection in
                try await connection.execute("SELECT pg_terminate_backend(\(pid)::int)")
                // Gone for sure before the pool hands the dead connection out.
                for _ in 0..<500 {
                    let left = try await connection.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid)::int").scalar(Int.self)
                    if left == 0 { break }
                    try await Runtime.sleep(for: .milliseconds(10))
                }
            }
            await admin.dispose()
            // Handed out after a failed ping: a new connection, no error for the caller.
            let answer = try await engine.withConnection { connection in
                (try await connection.execute("SELECT pg_backend_pid()").scalar(Int32.self), try await connection.execute("SELECT \(9)").scalar(Int.self))
            }
            #expect(answer.0 != pid && answer.1 == 9)
            await engine.dispose()
        }
    }
}

@Suite("SQLite locks", .limit(minutes: 1))
struct SQLiteLockTests {
    @Test("a write waiting for another connection's lock is cancelled promptly, not after the busy timeout",
          arguments: TestBackend.selected.filter { $0 != .virtual })
    func cancelledWhileBusy(_ backend: TestBackend) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 2
        try await PoolDatabase.sqliteFile.withEngine(configuration) { engine in
            try await backend.run {
                try await engine.withConnection { try await $0.execute("CREATE TABLE counter (n INTEGER NOT NULL)") }
                let holder = try await engine.connect()
                let writer = try await engine.connect()
                let lock = try await holder.begin()  // BEGIN IMMEDIATE: holds the write lock
                try await holder.execute("INSERT INTO counter VALUES (\(1))")
                let runtime = try Runtime.current
                let start = runtime.now
                let done: QueryResult? = try await moveOnAfter(.milliseconds(100)) { _ in
                    try await writer.execute("INSERT INTO counter VALUES (\(2))")
                }
                let waited = start.duration(to: runtime.now)
                #expect(done == nil, "the write went through while another connection held the lock")
                // The busy timeout is 5 s; a cancellation must not wait for it.
                #expect(waited < .seconds(2), "cancelled after \(waited)")
                #expect(!writer.isBroken && !writer.isInTransaction)
                try await lock.rollback()
                #expect(try await writer.execute("INSERT INTO counter VALUES (\(3))").rowsAffected == 1)
                await holder.close()
                await writer.close()
                await engine.dispose()
            }
        }
    }
}

@Suite("Connect timeouts", .limit(minutes: 1))
struct ConnectTimeoutTests {
    @Test("without any timeout set, connecting to a server that never answers stops after 10 s (virtual time)")
    func defaultConnectTimeout() async throws {
        let silent = try FaultProxy.silent()
        defer { silent.stop() }
        let engine = try Engine("postgresql://nobody@127.0.0.1:\(silent.port)/none", logger: quietLogger)
        #expect(PoolConfiguration().connectTimeout == nil && PoolConfiguration().cancellationGrace == .seconds(1))
        try await TestBackend.virtual.run {
            let start = try Runtime.current.now
            await #expect { _ = try await engine.connect() } throws: {
                ($0 as? SQLError)?.kind == .timeout && "\($0)".contains("default connect timeout")
            }
            #expect(try start.duration(to: Runtime.current.now) == .seconds(10))
            await engine.dispose()
        }
    }

    @Test("host names are resolved before libpq connects; literal addresses and socket directories need no lookup")
    func lookups() throws {
        // What the resolver was asked, and what libpq is given.
        func resolved(_ hosts: String, _ extra: [(key: String, value: String)] = []) throws -> (asked: [String], hostaddr: String?) {
            var asked: [String] = []
            let parameters = try resolvingHosts([("host", hosts)] + extra) { host in
                asked.append(host)
                return isLiteralAddress(host) ? [host] : ["10.0.0.9"]
            }
            return (asked, parameters.last { $0.key == "hostaddr" }?.value)
        }
        #expect(try resolved("/tmp,@abstract") == ([], ","))
        #expect(try resolved("db.internal,/tmp") == (["db.internal"], "10.0.0.9,"))
        #expect(try resolved("db.internal", [("hostaddr", "10.0.0.2")]).asked.isEmpty, "hostaddr given")
        // The real resolver answers a literal address with itself, without a lookup.
        for host in ["127.0.0.1", "::1"] { #expect(try resolve(host) == [host]) }
        #expect(try resolvingHosts([("host", "127.0.0.1,::1")], resolve: resolve).last?.value == "127.0.0.1,::1")
    }

    @Test("a host from the environment (PGHOST) is looked up off the loop like the URL's; a URL's own host, address or service comes first")
    func hostFromEnvironment() throws {
        let environment: [(key: String, value: String)] = [("host", "db.internal"), ("port", "6432")]
        func keys(_ parameters: [(key: String, value: String)]) -> [String] { parameters.map { "\($0.key)=\($0.value)" } }
        // No host in the URL: libpq's default host joins the parameters, and so needs a lookup off the loop.
        let merged = withHostDefaults([("dbname", "app")], defaults: { environment })
        #expect(keys(merged) == ["dbname=app", "host=db.internal", "port=6432"])
        #expect(try resolvingHosts(merged) { _ in ["10.0.0.9"] }.contains { $0.key == "hostaddr" && $0.value == "10.0.0.9" })
        // The URL's port stays.
        #expect(keys(withHostDefaults([("port", "5433")], defaults: { environment })) == ["port=5433", "host=db.internal"])
        // A host, an address or a service of the URL's own: unchanged (libpq reads a service's file before the
        // environment).
        for own: (key: String, value: String) in [("host", "10.0.0.1"), ("hostaddr", "10.0.0.1"), ("service", "main")] {
            #expect(keys(withHostDefaults([own], defaults: { environment })) == ["\(own.key)=\(own.value)"])
        }
        // libpq's own defaults always give a port (its built-in 5432 without PGPORT).
        #expect(libpqHostDefaults().contains { $0.key == "port" && !$0.value.isEmpty })
    }

    @Test("a server that never answers: the pool's connectTimeout and the URL's connect_timeout are typed timeouts",
          arguments: TestBackend.selected)
    func silentServerTimesOut(_ backend: TestBackend) async throws {
        let silent = try FaultProxy.silent()
        defer { silent.stop() }
        let port = silent.port
        var configuration = PoolConfiguration.patient
        configuration.connectTimeout = .milliseconds(200)
        let engine = Engine(url: try DatabaseURL("postgresql://nobody@127.0.0.1:\(port)/none"), pool: configuration, logger: quietLogger)
        let withURLTimeout = try Engine("postgresql://nobody@127.0.0.1:\(port)/none?connect_timeout=1", logger: quietLogger)
        try await backend.run {
            await #expect { _ = try await engine.connect() } throws: { ($0 as? SQLError)?.kind == .timeout }
            await #expect { _ = try await withURLTimeout.connect() } throws: { ($0 as? SQLError)?.kind == .timeout }
            let open = try engine.poolStatistics().open
            #expect(open == 0, "a timed-out open kept its slot")
            await engine.dispose()
            await withURLTimeout.dispose()
        }
    }
}
