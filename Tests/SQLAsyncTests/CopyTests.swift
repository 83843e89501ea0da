import Runtime
import SQLAsync
import TestSupport
import Testing

/// Bulk data: `copy(_:into:columns:)` on both databases (COPY on PostgreSQL, batched inserts on SQLite), and
/// PostgreSQL's raw `copyIn` / `copyOut` — exact values, all-or-nothing failures naming the row and column,
/// and cancellations that leave nothing copied and a clean connection.
@Suite("COPY and bulk copies", .limit(minutes: 3))
struct CopyTests {
    /// Values that a careless COPY encoding would alter: its own escapes, `\N`, separators, every byte.
    static func rows(_ count: Int, _ database: TestDatabase) -> [[SQLValue]] {
        let texts = ["plain", "tab\there", "new\nline", "carriage\rreturn", "back\\slash", "\\N", "", "Zoë ✓ 🎉", "a,b;\"c\"", " \\x41 "]
        // (SQLite refuses -0.0, which it would read back as 0.0.)
        let doubles: [Double] = database == .postgresql
            ? [0.1, -0.0, 1e300, -2.5e-308, 3.141592653589793, .infinity, -.infinity] : [0.1, 1e300, -2.5e-308, 3.141592653589793]
        let allBytes = (0...255).map(UInt8.init)
        return (0..<count).map { index in
            [
                .integer(Int64(index)),
                .text(texts[index % texts.count] + "\(index)"),
                index % 7 == 6 ? .null : .double(doubles[index % doubles.count]),
                .bool(index % 2 == 0),
                .bytes(index % 5 == 0 ? allBytes : Array(allBytes[(index % 256)...].prefix(3))),
                index % 3 == 0 ? .null : .integer(index % 4 == 0 ? Int64.max : Int64.min + Int64(index)),
            ]
        }
    }

    static let columns = ["id", "name", "score", "flag", "data", "big"]

    static func createTable(_ connection: Connection, _ database: TestDatabase, _ name: String = "copied") async throws {
        let bytes = database == .postgresql ? "bytea" : "BLOB"
        try await connection.execute(.unsafeRaw(
            "CREATE TABLE \(name) (id bigint PRIMARY KEY, name text NOT NULL, score double precision, flag boolean NOT NULL, data \(bytes), big bigint, small integer)"))
    }

    static func count(_ connection: Connection, _ table: String = "copied") async throws -> Int {
        try await connection.execute(.unsafeRaw("SELECT count(*) FROM \(table)")).scalar(Int.self) ?? -1
    }

    @Test("rows copied in come back exactly; the count is returned; empty input copies nothing",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func roundTrip(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.createTable(connection, database)
            let rows = Self.rows(10_000, database)
            let copied = try await connection.copy(rows, into: "copied", columns: Self.columns)
            #expect(copied == 10_000)
            let back = try await connection.execute("SELECT id, name, score, flag, data, big FROM copied ORDER BY id")
            #expect(back.count == rows.count)
            for (index, row) in back.enumerated() {
                var expected = rows[index]
                // SQLite has no boolean type: it keeps 1 and 0 (Bool decodes them).
                if database == .sqlite, case .bool(let flag) = expected[3] { expected[3] = .integer(flag ? 1 : 0) }
                if row.values != expected {
                    Issue.record("row \(index): \(row.values.prefix(4)) != \(expected.prefix(4))")
                    break
                }
            }
            #expect(try await connection.copy([[SQLValue]](), into: "copied", columns: Self.columns) == 0)
            // From an asynchronous sequence, as the rows arrive.
            let stream = AsyncStream<[SQLValue]> { continuation in
                for index in 20_000..<20_100 { continuation.yield(Self.rows(1, database)[0].enumerated().map { $0.offset == 0 ? .integer(Int64(index)) : $0.element }) }
                continuation.finish()
            }
            #expect(try await connection.copy(stream, into: "copied", columns: Self.columns) == 100)
            #expect(try await Self.count(connection) == 10_100)
            #expect(!connection.isBroken && !connection.isInTransaction)
        }
    }

    @Test("a bad row stops the copy with a typed error naming row and column, and nothing is copied",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func badRows(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await Self.createTable(connection, database)
            var rows = Self.rows(3_000, database)
            func expectRefused(_ rows: [[SQLValue]], columns: [String] = Self.columns, _ kind: SQLError.Kind, _ words: [String]) async throws {
                do {
                    try await connection.copy(rows, into: "copied", columns: columns)
                    Issue.record("copied \(words)")
                } catch let error as SQLError {
                    #expect(error.kind == kind, "\(error)")
                    for word in words { #expect(error.message.contains(word), "\(error.message)") }
                }
                #expect(try await Self.count(connection) == 0)
                #expect(!connection.isBroken && !connection.isInTransaction)
            }
            var short = rows
            short[2_500].removeLast()
            try await expectRefused(short, .misuse, ["row 2501", "5 values", "6 columns"])
            // The server's own error (a duplicate key) also undoes everything.
            var duplicate = rows
            duplicate[2_999][0] = .integer(5)
            try await expectRefused(duplicate, .constraint, [])
            guard database == .postgresql else { return }
            // Checked against the column's type before sending: nothing altered, nothing half-copied.
            rows[1_234].append(.integer(Int64(Int32.max) + 1))
            var others = rows.map { $0.count == 7 ? $0 : $0 + [.integer(1)] }
            try await expectRefused(others, columns: Self.columns + ["small"], .invalidParameter, ["row 1235", "'small'", "int4"])
            others = Self.rows(10, database)
            others[4][1] = .text("nul \u{0} byte")
            try await expectRefused(others, .invalidParameter, ["row 5", "'name'", "NUL"])
            others = Self.rows(10, database)
            others[6][1] = .bytes([1, 2])
            try await expectRefused(others, .invalidParameter, ["row 7", "'name'", "bytea"])
            // A domain's column is checked against the domain's base type, through domains over domains.
            try await connection.execute("CREATE DOMAIN label AS text")
            try await connection.execute("CREATE DOMAIN short_label AS label CHECK (length(VALUE) < 100)")
            try await connection.execute("CREATE DOMAIN weight AS real")
            try await connection.execute("CREATE TABLE tagged (id bigint, tag short_label, w weight)")
            do {
                try await connection.copy([[.integer(1), .bytes([1]), .double(1)]], into: "tagged", columns: ["id", "tag", "w"])
                Issue.record("bytes went into a domain over text")
            } catch let error as SQLError {
                #expect(error.kind == .invalidParameter && error.message.contains("'tag'"), "\(error)")
            }
            do {
                try await connection.copy([[.integer(1), .text("a"), .integer(16_777_217)]], into: "tagged", columns: ["id", "tag", "w"])
                Issue.record("an integer beyond 2^24 went into a domain over real")
            } catch let error as SQLError {
                #expect(error.kind == .invalidParameter && error.message.contains("'w'") && error.message.contains("float4"), "\(error)")
            }
            #expect(try await connection.copy([[.integer(1), .text("a"), .integer(16_777_216)]], into: "tagged", columns: ["id", "tag", "w"]) == 1)
        }
    }

    @Test("PostgreSQL's raw COPY: CSV in, text and CSV out in chunks, and a statement of the wrong kind refused",
          arguments: TestBackend.selected)
    func rawCopy(_ backend: TestBackend) async throws {
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            try await Self.createTable(connection, .postgresql)
            let copied = try await connection.copyIn("COPY copied (id, name, flag) FROM STDIN (FORMAT csv)") { writer in
                for index in 0..<50_000 { try await writer.write("\(index),\"name, \"\"\(index)\"\"\",\(index % 2 == 0)\n") }
            }
            #expect(copied == 50_000)
            #expect(try await connection.execute("SELECT name FROM copied WHERE id = 7").scalar(String.self) == "name, \"7\"")
            var data: [UInt8] = []
            var chunks = 0
            let out = try await connection.copyOut("COPY (SELECT id, name FROM copied ORDER BY id) TO STDOUT") { chunk in
                chunks += 1
                data += chunk
            }
            #expect(out == 50_000 && chunks > 1)
            let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
            #expect(lines.count == 50_001 && lines.last?.isEmpty == true)
            #expect(String(decoding: lines[7], as: UTF8.self) == "7\tname, \"7\"")
            // The wrong kind: refused, and the connection goes on.
            await #expect { try await connection.copyIn("COPY copied TO STDOUT") { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            await #expect { try await connection.copyOut("COPY copied FROM STDIN") { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            await #expect { try await connection.copyOut("SELECT 1") { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            await #expect { try await connection.copyIn("COPY nowhere FROM STDIN") { _ in } } throws: { ($0 as? SQLError)?.kind == .database }
            // Bad data is the server's error; nothing is copied.
            await #expect { try await connection.copyIn("COPY copied (id, name, flag) FROM STDIN") { try await $0.write("1\tx\tmaybe\n") } }
                throws: { ($0 as? SQLError)?.kind == .database }
            #expect(try await Self.count(connection) == 50_000)
            #expect(!connection.isBroken && !connection.isInTransaction)
        }
    }

    @Test("raw COPY is PostgreSQL's: on SQLite a typed error", arguments: TestBackend.selected)
    func rawCopyOnSQLite(_ backend: TestBackend) async throws {
        try await TestDatabase.sqlite.withPrivateConnection(backend) { connection in
            await #expect { try await connection.copyIn("COPY t FROM STDIN") { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            await #expect { try await connection.copyOut("COPY t TO STDOUT") { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
        }
    }

    @Test("a COPY FROM cancelled or failed part-way copies nothing and leaves the connection clean",
          arguments: TestBackend.selected)
    func copyInCut(_ backend: TestBackend) async throws {
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            try await Self.createTable(connection, .postgresql)
            // Cancelled once a good part is on its way (a tenth of the rows in a sanitizer build).
            let total = TestBuild.isSanitized ? 20_000 : 200_000
            var sent = 0
            let outcome = try await withCancelScope { scope -> String in
                do {
                    try await connection.copyIn("COPY copied (id, name, flag) FROM STDIN") { writer in
                        for id in 0..<total {
                            try await writer.write("\(id)\tn\ttrue\n")
                            sent += 1
                            if sent == total / 2 { scope.cancel() }
                        }
                    }
                    return "copied"
                } catch is CancellationError {
                    return "cancelled"
                } catch {
                    return "\(error)"
                }
            }
            // Cancelled promptly: the data goes out as it is written (libpq would otherwise buffer all of it),
            // so the producer stops within a piece of 64 KiB (under 10,000 of these rows).
            #expect(outcome == "cancelled" && sent >= total / 2 && sent < total / 2 + 10_000, "\(outcome), \(sent) rows written")
            #expect(try await Self.count(connection) == 0)
            #expect(!connection.isBroken && !connection.isInTransaction)
            let rows = Self.rows(10, .postgresql)
            // A deadline passing while the data source waits (after one row): nothing copied.
            let timedOut = try await withCancelScope(deadline: try Runtime.current.now.advanced(by: .milliseconds(200))) { _ in
                try await connection.copy(OneRowThenWait(row: rows[0]), into: "copied", columns: Self.columns)
            }
            #expect(timedOut == nil)
            #expect(try await Self.count(connection) == 0)
            #expect(!connection.isBroken && !connection.isInTransaction)
            // The data source's own error: thrown as it is.
            struct SourceFailed: Error {}
            await #expect(throws: SourceFailed.self) {
                try await connection.copyIn("COPY copied (id, name, flag) FROM STDIN") { writer in
                    try await writer.write("1\tn\ttrue\n")
                    throw SourceFailed()
                }
            }
            #expect(try await Self.count(connection) == 0)
            #expect(!connection.isBroken && !connection.isInTransaction)
            #expect(try await connection.copy(rows.prefix(10), into: "copied", columns: Self.columns) == 10)
        }
    }

    // A real-time bound in disguise: what the server had already sent is dropped row by row within the
    // clean-up limit (5 s), which ThreadSanitizer's slowdown of libpq's per-row calls once exceeded.
    @Test("a COPY TO left early — the reader throws, or is cancelled — leaves the connection clean at once",
          .realTimeBounds, arguments: TestBackend.selected)
    func copyOutCut(_ backend: TestBackend) async throws {
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            struct Enough: Error {}
            var chunks = 0
            await #expect(throws: Enough.self) {
                try await connection.copyOut("COPY (SELECT generate_series(1, 10000000)) TO STDOUT") { _ in
                    chunks += 1
                    if chunks == 2 { throw Enough() }
                }
            }
            #expect(chunks == 2 && !connection.isBroken)
            #expect(try await connection.execute("SELECT 42").scalar(Int.self) == 42)
            // The reader cancels at its first piece and gets no other, even while the server stays ahead of it.
            var handed = 0
            let outcome = try await withCancelScope { scope -> String in
                do {
                    let count = try await connection.copyOut("COPY (SELECT generate_series(1, 10000000)) TO STDOUT") { _ in
                        handed += 1
                        scope.cancel()
                    }
                    return "completed \(count)"
                } catch is CancellationError {
                    return "cancelled"
                } catch {
                    return "\(error)"
                }
            }
            #expect(outcome == "cancelled" && handed == 1, "\(outcome), \(handed) pieces handed over")
            #expect(!connection.isBroken && !connection.isInTransaction)
            #expect(try await connection.execute("SELECT 43").scalar(Int.self) == 43)
        }
    }

    @Test("1,000,000 rows: copied in, copied out, the same", arguments: TestBackend.selected)
    func million(_ backend: TestBackend) async throws {
        // A tenth in a sanitizer build: there the full load, three backends at once, starved the rest of the
        // suite (connects beside it passed their 10 s timeout).
        let total = TestBuild.isSanitized ? 100_000 : 1_000_000
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            try await connection.execute("CREATE TABLE accounts (id bigint, name text, balance bigint)")
            let rows = (1...total).lazy.map { index -> [SQLValue] in [.integer(Int64(index)), .text("user-\(index)"), .integer(Int64(index) * 10)] }
            #expect(try await connection.copy(rows, into: "accounts", columns: ["id", "name", "balance"]) == total)
            var lines = 0
            var sum = 0
            let out = try await connection.copyOut("COPY accounts (balance) TO STDOUT") { chunk in
                var value = 0
                for byte in chunk {
                    if byte == UInt8(ascii: "\n") {
                        lines += 1
                        sum += value
                        value = 0
                    } else {
                        value = value * 10 + Int(byte - UInt8(ascii: "0"))
                    }
                }
            }
            #expect(out == total && lines == total)
            #expect(sum == 10 * total * (total + 1) / 2)
        }
    }
}

/// One row, then a wait for a row that never comes (cancellable, as a runtime wait is).
struct OneRowThenWait: AsyncSequence {
    let row: [SQLValue]

    struct AsyncIterator: AsyncIteratorProtocol {
        let row: [SQLValue]
        var given = false
        let never = Event()

        mutating func next() async throws -> [SQLValue]? {
            if !given {
                given = true
                return row
            }
            try await never.wait()
            return nil
        }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(row: row) }
}
