import Runtime
import SQLAsync
import TestSupport
import Testing

@Suite("Streaming", .limit(minutes: 1))
struct StreamTests {
    /// `count` rows; `marker` (digits) tags the query text, to find it in pg_stat_activity.
    static func series(_ database: TestDatabase, _ count: Int, marker: UInt32 = 0) -> SQL {
        database == .postgresql
            // In the select list, generate_series produces rows as they are read (in FROM it would first
            // materialize all of them, spilling millions to disk).
            ? "SELECT generate_series(1, \(count)) AS n, repeat('x', 50) AS pad /* series \(unsafeRaw: String(marker)) */"
            : "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < \(count)) SELECT n, printf('%.50c', 'x') AS pad FROM s"
    }

    @Test("100,000 rows arrive in batches of at most the batch size; the connection is clean afterwards",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func hundredThousandRows(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let (count, sum, largestBatch) = try await connection.stream(Self.series(database, 100_000), batchSize: 1_000) { rows in
                    var count = 0
                    var sum = 0
                    var largest = 0
                    for try await batch in rows.batches {
                        largest = max(largest, batch.count)
                        for row in batch {
                            count += 1
                            sum += try row.decode("n", as: Int.self)
                        }
                    }
                    return (count, sum, largest)
                }
                #expect(count == 100_000 && sum == 100_000 * 100_001 / 2)
                // A last batch shorter than the batch size ends the stream (SQLite would start the statement
                // over if stepped past its end).
                let odd = try await connection.stream(Self.series(database, 1_001), batchSize: 100) { rows in
                    var count = 0
                    for try await _ in rows { count += 1 }
                    return count
                }
                #expect(odd == 1_001)
                #expect(largestBatch <= 1_000, "a batch held \(largestBatch) rows")
                #expect(try await connection.execute("SELECT \(7)").scalar(Int.self) == 7)
                // A builder query; zero rows end the stream at once.
                let none = try await connection.stream(select(Parameter<Int64>("n")).where(Parameter<Int64>("n") > 1),
                                                       parameters: ["n": 1]) { rows in
                    var count = 0
                    for try await _ in rows { count += 1 }
                    return count
                }
                #expect(none == 0)
            }
            await engine.dispose()
        }
    }

    /// Every backend × database but virtual time × PostgreSQL: leaving a stream early makes the server
    /// cancel and answer, and on a loaded machine that answer can take longer than the virtual clock's
    /// 250 ms of IO silence, after which it jumps past the clean-up's deadline and the connection is
    /// (correctly) given up. Virtual time runs this test on SQLite, whose work holds its clock still.
    static let endingEarlyCases: [(TestBackend, TestDatabase)] = TestBackend.selected.flatMap { backend in
        TestDatabase.allCases.filter { backend != .virtual || $0 != .postgresql }.map { (backend, $0) }
    }

    @Test("leaving early, a cancellation and an error mid-stream all leave the connection clean",
          .realTimeBounds, arguments: endingEarlyCases)
    func endingEarly(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                // Leave after 10 rows of a million.
                let marker = UInt32.random(in: 1...UInt32.max)
                let firstTen = try await connection.stream(Self.series(database, 1_000_000, marker: marker), batchSize: 100) { rows in
                    var names: [Int] = []
                    for try await row in rows {
                        names.append(try row.decode("n", as: Int.self))
                        if names.count == 10 { break }
                    }
                    if database == .postgresql {
                        // Bounded memory is back-pressure: with 10 rows read, the server is still producing
                        // (held back by the unread socket), not done with rows buffered in this process.
                        let observer = try database.engine()
                        let active = try await observer.withConnection { observer in
                            try await observer.execute(
                                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE \("%/* series \(marker) */%") AND pid <> pg_backend_pid()"
                            ).scalar(Int.self)
                        }
                        await observer.dispose()
                        #expect(active == 1, "the whole result was read ahead of the consumer")
                    }
                    return names
                }
                #expect(firstTen == Array(1...10))
                #expect(!connection.isBroken && !connection.isInTransaction)
                #expect(try await connection.execute("SELECT \(1) AS one").scalar(Int.self) == 1)

                // Cancelled by its scope while iterating (the same on every backend) …
                let counted: Int? = try await withCancelScope { scope in
                    try await connection.stream(Self.series(database, 10_000_000), batchSize: 500) { rows in
                        var count = 0
                        for try await _ in rows {
                            count += 1
                            if count == 1_234 { scope.cancel() }
                        }
                        return count
                    }
                }
                #expect(counted == nil, "the stream went on after its scope was cancelled")
                #expect(!connection.isBroken && !connection.isInTransaction)
                // … and by a deadline, most likely while a batch is read (virtual time stands still while the
                // database works, so only real clocks).
                if backend != .virtual {
                    let seen: Int? = try await moveOnAfter(.milliseconds(50)) { _ in
                        try await connection.stream(Self.series(database, 10_000_000), batchSize: 500) { rows in
                            var count = 0
                            for try await _ in rows { count += 1 }
                            return count
                        }
                    }
                    #expect(seen == nil, "ten million rows streamed within 50 ms")
                }
                #expect(!connection.isBroken && !connection.isInTransaction)
                #expect(try await connection.execute("SELECT \(2) AS two").scalar(Int.self) == 2)

                // The database fails at row 5,000: the rows before it arrive, then the typed error.
                let failing: SQL = database == .postgresql
                    ? "SELECT 10 / (g - 5000) AS q FROM generate_series(1, 10000) g"
                    : "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 10000) SELECT CASE WHEN n = 5000 THEN abs(-9223372036854775807 - 1) ELSE n END AS q FROM s"
                var received = 0
                do {
                    try await connection.stream(failing, batchSize: 100) { rows in
                        for try await _ in rows { received += 1 }
                    }
                    Issue.record("the failing query streamed to its end")
                } catch let error as SQLError {
                    #expect(error.kind != .connection, "\(error)")
                }
                #expect(received <= 4_999)
                #expect(!connection.isBroken && !connection.isInTransaction)
                #expect(try await connection.execute("SELECT \(3) AS three").scalar(Int.self) == 3)
                if database == .postgresql {
                    let running = try await connection.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE \("%/* series \(marker) */%") AND pid <> pg_backend_pid()")
                    #expect(try running.scalar(Int.self) == 0, "a stream left early still runs on the server")
                }
            }
            await engine.dispose()
        }
    }

    @Test("a stream kept past its call is refused, not read from a connection someone else holds",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func escapedStream(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let engine = try database.engine()
        try await backend.run {
            try await engine.withConnection { connection in
                let escaped = try await connection.stream(Self.series(database, 1_000), batchSize: 10) { rows in rows }
                var iterator = escaped.makeAsyncIterator()
                await #expect { _ = try await iterator.next() } throws: { ($0 as? SQLError)?.kind == .misuse }
                #expect(try await connection.execute("SELECT \(4) AS four").scalar(Int.self) == 4)
            }
            await engine.dispose()
        }
    }
}

@Suite("Streaming, cut short", .limit(minutes: 1))
struct StreamCutShortTests {
    @Test("a stream whose read was cancelled (a timeout) never looks finished: the next read throws",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func cancelledReadIsNotTheEnd(_ backend: TestBackend, _ database: TestDatabase) async throws {
        // The drain after the timeout is what this checks: a grace long enough for a server slowed down by the
        // parallel suite (with the default 500 ms it may give the connection up instead, which is also right).
        let engine = try database.engine(pool: .patient)
        try await backend.run {
            try await engine.withConnection { connection in
                // PostgreSQL: ten quick rows, then one every 7 s (longer than virtual time's quiet period), so
                // that the second batch's read is waiting for
                // the server when the deadline passes (each row is larger than the server's 8 KB output buffer,
                // so it is sent at once). SQLite: the read runs in an already cancelled scope.
                let sql: SQL = database == .postgresql
                    ? "SELECT g AS n, repeat('x', 9000) || pg_sleep(CASE WHEN g > 10 THEN 7 ELSE 0 END)::text AS pad FROM generate_series(1, 1000) g"
                    : StreamTests.series(database, 10_000)
                let outcome = try await connection.stream(sql, batchSize: 10) { rows in
                    var iterator = rows.makeAsyncIterator()
                    for expected in 1...10 {
                        #expect(try await iterator.next()?.decode("n", as: Int.self) == expected)
                    }
                    // A timeout that ends while the stream is being read (the next row is a second away).
                    let interrupted: Row?? = try await moveOnAfter(.milliseconds(100)) { scope in
                        if database == .sqlite { scope.cancel() }
                        return try await iterator.next()
                    }
                    #expect(interrupted == nil, "the cancelled read returned rows")
                    do {
                        let after = try await iterator.next()
                        return "returned \(after == nil ? "the end" : "a row")"
                    } catch let error as SQLError {
                        return "\(error.kind)"
                    }
                }
                #expect(outcome == "cancelled", "after a cancelled read the stream \(outcome)")
                // The connection is clean and usable afterwards.
                #expect(try await connection.execute("SELECT \(7)").scalar(Int.self) == 7)
            }
            await engine.dispose()
        }
    }
}
