import Runtime
import SQLAsync
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// COMMIT is a point of no return: once sent, its answer is awaited (shielded, within its own deadline), and
/// a connection lost before the answer is reported as "in doubt", never as a rollback or a cancellation.
@Suite("COMMIT", .limit(minutes: 1))
struct CommitTests {
    /// A table whose inserts make COMMIT take `seconds` (a deferred constraint trigger that sleeps).
    static func slowCommitTable(_ connection: Connection, seconds: Double) async throws -> String {
        let suffix = UInt32.random(in: 0...UInt32.max)
        let table = "slow_commit_\(suffix)"
        try await connection.executeScript("""
            CREATE TABLE \(table) (id INTEGER PRIMARY KEY);
            CREATE FUNCTION \(table)_sleep() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_sleep(TG_ARGV[0]::float8); RETURN NULL; END $$;
            CREATE CONSTRAINT TRIGGER \(table)_slow AFTER INSERT ON \(table) DEFERRABLE INITIALLY DEFERRED
                FOR EACH ROW EXECUTE FUNCTION \(table)_sleep('\(seconds)');
            """)
        return table
    }

    @Test("a cancellation that lands while COMMIT runs does not report a commit that happened as cancelled",
          arguments: TestBackend.selected)
    func cancelledDuringCommit(_ backend: TestBackend) async throws {
        let engine = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        let observer = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            // The COMMIT must still run when the poll below looks: a sanitizer build's polls are slow.
            let table = try await observer.withConnection { try await Self.slowCommitTable($0, seconds: TestBuild.isSanitized ? 5 : 0.5) }
            let pid = Recorder<Int>()
            let outcome = Recorder<Int?>()
            let scope = CancelScope()
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    let value: Int? = try await scope.enter { _ in
                        try await engine.withConnection { connection in
                            try await connection.withTransaction { connection in
                                pid.append(try await connection.execute("SELECT pg_backend_pid()").scalar(Int.self) ?? -1)
                                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id) VALUES (\(1))")
                            }
                        }
                        return 1
                    }
                    outcome.append(value)
                }
                try await Self.waitUntilCommitting(pid, observer: observer)
                scope.cancel()  // the deadline of a caller, landing while the answer to COMMIT is awaited
            }
            let rows = try await observer.withConnection {
                try await $0.execute("SELECT count(*) FROM \(unsafeRaw: table)").scalar(Int.self)
            }
            #expect(outcome.values == [1] && rows == 1, "reported \(outcome.values), \(rows ?? -1) rows committed")
            try await observer.withConnection { try await $0.executeScript("DROP TABLE \(table); DROP FUNCTION \(table)_sleep()") }
            await engine.dispose()
            await observer.dispose()
        }
    }

    /// Waits until the session whose pid is recorded runs its COMMIT.
    static func waitUntilCommitting(_ pid: Recorder<Int>, observer: Engine) async throws {
        try await waitUntilRunning(pid, queryLike: "COMMIT", observer: observer)
    }

    /// Waits until the session whose pid is recorded runs a statement whose text is like `pattern` (and, when
    /// given, waits on `waitEvent` in it, such as a trigger's `PgSleep`).
    static func waitUntilRunning(
        _ pid: Recorder<Int>, queryLike pattern: String, waitEvent: String? = nil, observer: Engine
    ) async throws {
        // (Stretched in a sanitizer build, where the loaded suite makes every poll slow.)
        try await failAfter(.seconds(TestBuild.isSanitized ? 120 : 20)) {
            while true {
                if let backendPid = pid.values.first {
                    let running = try await observer.withConnection { observer in
                        try await observer.execute(
                            """
                            SELECT count(*) FROM pg_stat_activity WHERE pid = \(backendPid) AND state = 'active'
                              AND query LIKE \(pattern) AND (\(waitEvent)::text IS NULL OR wait_event = \(waitEvent))
                            """).scalar(Int.self)
                    }
                    if running == 1 { return }
                }
                // A real-time pause (virtual time's clock stands still meanwhile): the COMMIT runs for real time,
                // and a virtual sleep would only end when the server next answers.
                try await Runtime.runBlocking { _ = usleep(2_000) }
            }
        }
    }

    @Test("a connection lost after COMMIT was sent is reported as commitInDoubt", arguments: TestBackend.selected)
    func lostDuringCommit(_ backend: TestBackend) async throws {
        let engine = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        let observer = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            let table = try await observer.withConnection { try await Self.slowCommitTable($0, seconds: 30) }
            let pid = Recorder<Int>()
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    await #expect {
                        try await engine.withConnection { connection in
                            try await connection.withTransaction { connection in
                                pid.append(try await connection.execute("SELECT pg_backend_pid()").scalar(Int.self) ?? -1)
                                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id) VALUES (\(1))")
                            }
                        }
                    } throws: { ($0 as? SQLError)?.kind == .commitInDoubt }
                }
                // Once the session runs its COMMIT (the trigger sleeps in it), the server kills it.
                try await Self.waitUntilCommitting(pid, observer: observer)
                try await observer.withConnection { observer in
                    _ = try await observer.execute("SELECT pg_terminate_backend(CAST(\(pid.values[0]) AS integer))")
                }
            }
            try await observer.withConnection { try await $0.executeScript("DROP TABLE \(table); DROP FUNCTION \(table)_sleep()") }
            await engine.dispose()
            await observer.dispose()
        }
    }
}

/// A thread-safe list, for values a test's tasks report.
final class Recorder<Value: Sendable>: Sendable {
    private let storage = Locked<[Value]>([])
    func append(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
}

/// A statement that finished on the server although the caller was cancelled while waiting for its answer
/// reports its result: "cancelled" only ever means it did not happen.
@Suite("A cancel that comes too late", .limit(minutes: 1), .realTimeBounds)
struct LateCancelTests {
    @Test("an autocommit INSERT the server completes despite the cancel request returns its result, and the row is there",
          arguments: TestBackend.selected)
    func insertCompletesDespiteCancel(_ backend: TestBackend) async throws {
        let engine = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        let observer = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            let table = "late_cancel_\(UInt32.random(in: 0...UInt32.max))"
            // A trigger that sleeps and swallows the cancel request: the INSERT completes whatever happens. (Two
            // seconds: with half a second, a cancel request that reached the server just after the sleep — the
            // poll below saw it late — cancelled the INSERT itself, which was then reported, rightly, as
            // cancelled and absent; this test is about the other outcome.)
            try await observer.withConnection { connection in
                try await connection.executeScript("""
                    CREATE TABLE \(table) (id INTEGER PRIMARY KEY);
                    CREATE FUNCTION \(table)_stubborn() RETURNS trigger LANGUAGE plpgsql AS $$
                        BEGIN
                            BEGIN PERFORM pg_sleep(2); EXCEPTION WHEN query_canceled THEN NULL; END;
                            RETURN NEW;
                        END $$;
                    CREATE TRIGGER \(table)_slow BEFORE INSERT ON \(table) FOR EACH ROW EXECUTE FUNCTION \(table)_stubborn();
                    """)
            }
            // Up to three tries: a cancel request that reaches the server only after the trigger's block (seen
            // under a loaded suite) cancels the INSERT itself, which must then be reported as cancelled with no
            // row — honest, but not the outcome this test is about. Every try must be one of the two.
            var completedDespiteCancel = false
            for attempt in 1...3 where !completedDespiteCancel {
                let pid = Recorder<Int>()
                let outcome = Recorder<String>()
                let scope = CancelScope()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        do {
                            let value: Int? = try await scope.enter { _ in
                                try await engine.withConnection { connection in
                                    pid.append(try await connection.execute("SELECT pg_backend_pid()").scalar(Int.self) ?? -1)
                                    let inserted = try await connection.execute("INSERT INTO \(unsafeRaw: table) (id) VALUES (\(attempt))")
                                    outcome.append("returned, \(inserted.rowsAffected) row")
                                    try await Runtime.checkpoint()  // the caller's next checkpoint sees the cancellation
                                    outcome.append("went past the checkpoint")
                                }
                                return 1
                            }
                            outcome.append(value == nil ? "scope caught the cancellation" : "scope returned")
                        } catch {
                            outcome.append("threw \(error)")
                        }
                    }
                    // Once the INSERT's trigger sleeps (where it swallows the cancel request), the caller is cancelled.
                    try await CommitTests.waitUntilRunning(pid, queryLike: "INSERT%", waitEvent: "PgSleep", observer: observer)
                    scope.cancel()
                }
                let rows = try await observer.withConnection {
                    try await $0.execute("SELECT count(*) FROM \(unsafeRaw: table) WHERE id = \(attempt)").scalar(Int.self)
                }
                if outcome.values == ["returned, 1 row", "scope caught the cancellation"], rows == 1 {
                    completedDespiteCancel = true
                } else {
                    #expect(outcome.values == ["scope caught the cancellation"] && rows == 0, "try \(attempt): \(outcome.values), \(rows ?? -1) rows")
                }
            }
            #expect(completedDespiteCancel, "in three tries, the cancel request never landed inside the trigger's block")
            try await observer.withConnection { try await $0.executeScript("DROP TABLE \(table); DROP FUNCTION \(table)_stubborn()") }
            await engine.dispose()
            await observer.dispose()
        }
    }
}
