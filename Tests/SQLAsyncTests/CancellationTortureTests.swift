import Runtime
import SQLAsync
import Synchronization
import TestSupport
import Testing

@Suite("Cancellation safety", .limit(minutes: 2))
struct CancellationTortureTests {
    // Virtual time is left out: its clock does not move while outside work runs, so random deadlines
    // measure nothing there.
    @Test("1,000 operations (250 under a sanitizer) cancelled at random points leave a healthy pool",
          arguments: TestBackend.selected.filter { $0 != .virtual }, PoolDatabase.allCases)
    func randomCancellations(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        var configuration = PoolConfiguration.patient
        configuration.size = 4
        configuration.overflow = 2
        let applicationName = "torture_\(UInt32.random(in: 0...UInt32.max))"
        try await backend.run {
            // A server of its own: this storm's cancel requests queue at the postmaster (see
            // `ThrowAwayCluster.sharedForLoad()`), and beside it other tests' cancellations missed their bounds.
            let server: String? =
                database == .postgresql ? try await Runtime.runBlocking { try ThrowAwayCluster.sharedForLoad().url } : nil
            try await database.withEngine(configuration, applicationName: applicationName, server: server) { engine in
                let table = SQL.identifier("torture_\(UInt32.random(in: 0...UInt32.max))")
                try await engine.withConnection { connection in
                    try await connection.execute("CREATE TABLE \(table) (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
                    try await connection.execute("INSERT INTO \(table) (id, n) VALUES (\(1), \(0))")
                }
                let slow: SQL =
                    database == .postgresql
                    ? "SELECT pg_sleep(0.002)"
                    : "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c WHERE x < 20000"
                // A PostgreSQL round trip costs more (and a cancelled one a cancel request), so its deadlines
                // range wider for a comparable mix of completed and cancelled operations.
                let maxDeadline: Int64 = database == .postgresql ? 25_000 : 8_000
                let outcomes = Locked<(completed: Int, cancelled: Int, inDoubt: Int, failed: [String])>((0, 0, 0, []))
                // A quarter under a sanitizer: the full storm beside the rest of the suite slowed connects there
                // past their timeout.
                let operations = TestBuild.isSanitized ? 250 : 1_000
                // 8 workers, 1,000 operations in all, each under its own random deadline: some finish, some are
                // cancelled waiting for a connection, most are cancelled somewhere inside a query or transaction.
                try await Runtime.withTaskGroup { group in
                    for worker in 0..<8 {
                        try group.startSoon {
                            var generator = SystemRandomNumberGenerator()
                            for index in stride(from: worker, to: operations, by: 8) {
                                let deadline = Duration.microseconds(Int64.random(in: 0...maxDeadline, using: &generator))
                                let kind = index % 4
                                do {
                                    let done: Void? = try await moveOnAfter(deadline) { _ in
                                        try await engine.withConnection { connection in
                                            switch kind {
                                            case 0:
                                                try await connection.execute(slow)
                                            case 1:
                                                try await connection.withTransaction { connection in
                                                    try await connection.execute("UPDATE \(table) SET n = n + \(1) WHERE id = \(1)")
                                                    try await connection.execute(slow)
                                                }
                                            case 2:
                                                try await connection.execute("SELECT n FROM \(table) WHERE id = \(1)")
                                            default:
                                                try await connection.withTransaction { connection in
                                                    try await connection.execute("SELECT n FROM \(table)")
                                                    try await connection.withTransaction { connection in
                                                        try await connection.execute(slow)
                                                    }
                                                }
                                            }
                                        }
                                    }
                                    outcomes.withLock { done == nil ? ($0.cancelled += 1) : ($0.completed += 1) }
                                } catch let error as SQLError where error.kind == .timeout {
                                    outcomes.withLock { $0.cancelled += 1 }  // SQLite busy while another writer held the lock
                                } catch let error as SQLError where error.kind == .commitInDoubt || error.kind == .statementInDoubt {
                                    // The honest answer when a loaded server stays silent past the deadline and the
                                    // grace (seen once, under the whole suite and its throw-away clusters).
                                    outcomes.withLock { $0.inDoubt += 1 }
                                } catch {
                                    outcomes.withLock { $0.failed.append("\(error)") }
                                }
                            }
                        }
                    }
                }
                let result = outcomes.withLock { $0 }
                #expect(result.failed.isEmpty, "unexpected failures: \(result.failed.prefix(5))")
                #expect(result.completed + result.cancelled + result.inDoubt + result.failed.count == operations)
                // How many complete depends on the machine's speed; that some are cancelled does not.
                #expect(result.cancelled > 0, "nothing was cancelled: \(result.completed) completed")
                // Every lease came back; every pooled connection works and is outside any transaction.
                let statistics = try engine.poolStatistics()
                #expect(statistics.open == statistics.idle && statistics.waiting == 0, "\(statistics)")
                var checked: [Connection] = []
                for _ in 0..<statistics.idle {
                    let connection = try await engine.connect()
                    #expect(!connection.isBroken && !connection.isInTransaction)
                    #expect(try await connection.execute("SELECT \(1)").scalar(Int.self) == 1)
                    checked.append(connection)
                }
                for connection in checked { await connection.close() }
                if database == .postgresql {
                    // Cancelled queries must be gone from the server within 0.5 s.
                    var clean: Int? = -1
                    for _ in 0..<50 where clean != 0 {
                        try await Runtime.sleep(for: .milliseconds(10))
                        clean = try await engine.withConnection { connection in
                            try await connection.execute(
                            """
                            SELECT count(*) FROM pg_stat_activity
                            WHERE application_name = \(applicationName) AND pid <> pg_backend_pid()
                              AND (state = 'idle in transaction' OR (state = 'active' AND query LIKE '%pg_sleep(0.002)%'))
                            """
                        ).scalar(Int.self)
                        }
                    }
                    #expect(clean == 0, "sessions left in a transaction or still running a cancelled query")
                }
                try await engine.withConnection { connection in try await connection.execute("DROP TABLE \(table)") }
                print("torture \(backend) \(database): completed \(result.completed), cancelled \(result.cancelled), in doubt \(result.inDoubt)")
                await engine.dispose()
            }
        }
    }
}
