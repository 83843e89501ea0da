import Runtime
@testable import SQLAsync
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Pool invalidation (state machine)")
struct PoolInvalidationMachineTests {
    @Test("after the server went away, every connection idle until then is checked before its next use")
    func invalidation() {
        var machine = PoolStateMachine<String, Int>(size: 3, overflow: 0, maxAge: nil)
        for _ in 0..<2 { guard case .open = machine.checkout(1, now: 0) else { Issue.record("no slot"); return } }
        #expect(machine.release("a", openedAt: 0, healthy: true, now: 1) == .keep)
        machine.invalidate()
        #expect(machine.release("b", openedAt: 0, healthy: true, now: 2) == .keep)
        // The warmest first: b came back after the invalidation, a before it.
        guard case .use(let b, let checkB) = machine.checkout(2, now: 3), case .use(let a, let checkA) = machine.checkout(3, now: 3)
        else { Issue.record("idle connections not handed out"); return }
        #expect(b.connection == "b" && !checkB)
        #expect(a.connection == "a" && checkA)
        #expect(!machine.isDrained)
        _ = machine.dispose()
        for name in ["a", "b"] { #expect(machine.release(name, openedAt: 0, healthy: true, now: 4) == .close(name)) }
        #expect(machine.isDrained)
    }
}

@Suite("Pool checkout without waiting (state machine)")
struct PoolFastPathTests {
    @Test("a free connection or slot is handed out without queueing; at the limit nothing changes")
    func withoutWaiting() {
        var machine = PoolStateMachine<String, Int>(size: 1, overflow: 0, maxAge: nil)
        guard case .open? = machine.checkoutWithoutWaiting(now: 0) else { Issue.record("no slot"); return }
        #expect(machine.checkoutWithoutWaiting(now: 1) == nil, "at the limit: the caller waits the slow way")
        #expect(machine.waiters.isEmpty && machine.open == 1)
        #expect(machine.release("a", openedAt: 0, healthy: true, now: 2) == .keep)
        guard case .use(let idle, false)? = machine.checkoutWithoutWaiting(now: 3) else { Issue.record("idle not reused"); return }
        #expect(idle.connection == "a")
        _ = machine.dispose()
        guard case .fail? = machine.checkoutWithoutWaiting(now: 4) else { Issue.record("a disposed pool handed out"); return }
    }
}

extension PoolStateMachine.ReleaseAction: Equatable where Connection: Equatable {
    static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.keep, .keep): true
        case (.close(let a), .close(let b)): a == b
        case (.handTo(let a, let x), .handTo(let b, let y)): a == b && x.connection == y.connection
        case (.closeAndOpenFor(let a, let x), .closeAndOpenFor(let b, let y)): a == b && x == y
        default: false
        }
    }
}

@Suite("Pool lifecycle", .limit(minutes: 1))
struct PoolLifecycleTests {
    @Test("a Connection dropped without close() frees its slot and ends its session, open transaction and all",
          arguments: TestBackend.selected, PoolDatabase.allCases)
    func droppedConnection(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 1
        configuration.overflow = 0
        configuration.checkoutTimeout = .seconds(10)
        try await database.withEngine(configuration) { engine in
            let table = SQL.identifier("dropped_\(UInt32.random(in: 0...UInt32.max))")
            try await backend.run {
                try await engine.withConnection { connection in
                    try await connection.execute("CREATE TABLE \(table) (id INTEGER PRIMARY KEY)")
                }
                var pid: Int?
                do {
                    let forgotten = try await engine.connect()
                    _ = try await forgotten.begin()
                    try await forgotten.execute("INSERT INTO \(table) VALUES (\(1))")
                    if database == .postgresql { pid = try await forgotten.execute("SELECT pg_backend_pid()").scalar(Int.self) }
                    // Dropped here, inside its transaction, holding the pool's only slot.
                }
                // The slot is free again (this waited for the checkout timeout, and failed, before).
                try await engine.withConnection(timeout: .seconds(5)) { connection in
                    // The same key: this waits for the dropped transaction's lock until its session ends and rolls
                    // it back (it would wait for good if the socket were kept open).
                    try await connection.execute("INSERT INTO \(table) VALUES (\(1))")
                    #expect(try await connection.execute("SELECT count(*) FROM \(table)").scalar(Int.self) == 1)
                    if let pid {
                        // The server process ends right after the rollback.
                        var alive = 1
                        for _ in 0..<100 where alive > 0 {
                            alive = try await connection.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = \(pid)")
                                .scalar(Int.self) ?? 0
                            if alive > 0 { try await Runtime.sleep(for: .milliseconds(50)) }
                        }
                        #expect(alive == 0, "the dropped connection's session is still there")
                    }
                    try await connection.execute("DROP TABLE \(table)")
                }
                await engine.dispose()
            }
        }
    }

    @Test("close(timeout:) refuses new checkouts, waits for connections in use, and says whether all came back",
          arguments: TestBackend.selected, PoolDatabase.allCases)
    func gracefulClose(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 2
        try await database.withEngine(configuration) { engine in
            try await backend.run {
                let idle = try await engine.connect()
                await idle.close()
                let busy = try await engine.connect()
                let returned = Event()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        try await Runtime.waitAllTasksBlocked()  // close(timeout:) waits for `busy`
                        await #expect(throws: SQLError.self) { _ = try await engine.connect() }
                        #expect(try await busy.execute("SELECT \(1)").scalar(Int.self) == 1, "a connection in use works on")
                        await busy.close()
                        returned.set()
                    }
                    #expect(await engine.close(timeout: .seconds(30)))
                    #expect(returned.isSet)
                }
                #expect(try engine.poolStatistics().open == 0)
            }
        }
        // A connection never given back: the wait ends at the timeout (virtual time: at once), and says so.
        try await database.withEngine(configuration) { engine in
            try await backend.run {
                let kept = try await engine.connect()
                #expect(await engine.close(timeout: .milliseconds(50)) == false)
                await kept.close()  // closed now, not pooled
            }
        }
    }

    @Test("the engine's statement timeout cancels a statement that runs too long, and the connection goes on",
          arguments: TestBackend.selected, PoolDatabase.allCases)
    func statementTimeout(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var configuration = PoolConfiguration.patient
        // Long enough for the statement after it on a loaded machine (it has the same limit): 2 s was once
        // too short for a SQLite `SELECT 2` under the whole CI load.
        configuration.statementTimeout = .seconds(5)
        try await database.withEngine(configuration) { engine in
            try await backend.run {
                try await engine.withConnection { connection in
                    if backend == .virtual, database == .sqliteFile {
                        // Work on a thread takes no virtual time: no virtual deadline passes while it runs (see
                        // VirtualTimeRuntime), so a long statement finishes.
                        let rows = try await connection.execute(
                            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000000) SELECT count(*) FROM n")
                        #expect(try rows.scalar(Int.self) == 2_000_000)
                        return
                    }
                    let endless: SQL = database == .postgresql
                        ? "SELECT pg_sleep(30)"
                        : "WITH RECURSIVE forever(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM forever) SELECT count(*) FROM forever"
                    do {
                        try await connection.execute(endless)
                        Issue.record("an endless statement ended")
                    } catch let error as SQLError {
                        #expect(error.kind == .timeout, "\(error)")
                        #expect(error.message.contains("statement timeout"))
                    }
                    #expect(!connection.isBroken)
                    #expect(try await connection.execute("SELECT \(2)").scalar(Int.self) == 2)
                }
                await engine.dispose()
            }
        }
    }

    @Test("a server that went away has the pool check every idle connection before reuse",
          arguments: TestBackend.selected)
    func invalidation(_ backend: TestBackend) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 3
        configuration.overflow = 0
        let name = "invalidation_\(UInt32.random(in: 0...UInt32.max))"
        try await PoolDatabase.postgresql.withEngine(configuration, applicationName: name, direct: true) { engine in
            try await backend.run {
                // Three connections, all idle in the pool.
                var held: [Connection] = []
                for _ in 0..<3 { held.append(try await engine.connect()) }
                for connection in held { await connection.close() }
                held = []
                #expect(try engine.poolStatistics().idle == 3)
                // The server restarts, as far as these sessions can tell.
                let observer = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
                try await observer.withConnection { admin in
                    try await admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = \(name)")
                }
                await observer.dispose()
                // The first one in use finds out...
                await #expect { try await engine.withConnection { try await $0.execute("SELECT 1") } } throws: {
                    ($0 as? SQLError)?.kind == .connection
                }
                // ...and the others are checked and replaced before they are handed out.
                for _ in 0..<3 {
                    #expect(try await engine.withConnection { try await $0.execute("SELECT \(5)").scalar(Int.self) } == 5)
                }
                await engine.dispose()
            }
        }
    }
}
