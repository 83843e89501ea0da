import Runtime
import RuntimeTesting
import TestSupport
@testable import SQLAsync
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("SQLite driver", .limit(minutes: 1))
struct SQLiteDriverTests {
    @Test("values round-trip exactly: NULL, integer extremes, doubles, non-ASCII and NUL text, bytes",
          arguments: TestBackend.selected)
    func roundTrip(_ backend: TestBackend) async throws {
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: nil)
            _ = try await connection.execute("CREATE TABLE t (v)", [])
            let values: [SQLValue] = [
                .null, .integer(.max), .integer(.min), .integer(0), .double(-0.5), .double(1e308),
                .text(""), .text("héllo wörld ✓ 日本"), .text("nul\u{0}inside"), .bytes([]), .bytes([0, 255, 1, 0]),
            ]
            for value in values { _ = try await connection.execute("INSERT INTO t (v) VALUES (?)", [value]) }
            let rows = try await connection.execute("SELECT v FROM t ORDER BY rowid", [])
            #expect(rows.columns == ["v"])
            #expect(rows.rows.map { $0[0] } == values)
            let inserted = try await connection.execute("INSERT INTO t (v) VALUES (?), (?)", [.bool(true), .bool(false)])
            #expect(inserted.rowsAffected == 2)
            await connection.close()
        }
    }

    @Test("errors are typed, carry the result code and the SQL, never the values", arguments: TestBackend.selected)
    func errors(_ backend: TestBackend) async throws {
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: nil)
            _ = try await connection.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL)", [])
            _ = try await connection.execute("INSERT INTO u (name) VALUES (?)", [.text("secret-value")])
            do {
                _ = try await connection.execute("INSERT INTO u (name) VALUES (?)", [.text("secret-value")])
                Issue.record("a duplicate was accepted")
            } catch let error as SQLError {
                #expect(error.kind == .constraint)
                #expect(error.resultCode.map { $0 & 0xFF } == 19)
                #expect(error.sql == "INSERT INTO u (name) VALUES (?)")
                #expect(!error.description.contains("secret-value"))
            }
            await #expect(throws: SQLError.self) { _ = try await connection.execute("SELEC 1", []) }
            do {
                _ = try await connection.execute("SELEC 1", [])
            } catch let error as SQLError {
                #expect(error.kind == .syntax)
            }
            do {
                _ = try await connection.execute("SELECT ?", [])
            } catch let error as SQLError {
                #expect(error.kind == .misuse)
            }
            await connection.close()
        }
    }

    @Test("a cancelled long query is interrupted at once and the connection stays usable",
          arguments: TestBackend.selected)
    func cancellation(_ backend: TestBackend) async throws {
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: nil)
            // Cancelled from another thread once the query runs: on virtual time a deadline would never come,
            // because outside work takes no virtual time.
            let canceller = BlockingThreadPool(maximumThreads: 1)
            let started = monotonicSeconds()
            let result: RawRows? = try await withCancelScope { scope in
                canceller.submit {
                    usleep(50_000)
                    scope.cancel()
                }
                return try await connection.execute(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c WHERE x < 0",
                    [])
            }
            canceller.shutdown()
            #expect(result == nil, "the endless query was not cancelled")
            #expect(monotonicSeconds() - started < 10)
            let after = try await connection.execute("SELECT 42", [])
            #expect(after.rows == [[.integer(42)]])
            await connection.close()
        }
    }

    @Test("a cancellation that lands before the statement starts still stops it (20 races)",
          arguments: TestBackend.selected)
    func cancellationBeforeStart(_ backend: TestBackend) async throws {
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: nil)
            let canceller = BlockingThreadPool(maximumThreads: 1)
            for round in 0..<20 {
                let result: RawRows? = try await withCancelScope { scope in
                    canceller.submit {
                        usleep(UInt32(round % 3) * 1_000)  // 0, 1 or 2 ms: before, around and after the start
                        scope.cancel()
                    }
                    return try await connection.execute(
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c WHERE x < 0",
                        [])
                }
                #expect(result == nil, "round \(round): the endless query was not stopped")
            }
            canceller.shutdown()
            #expect(try await connection.execute("SELECT 1", []).rows == [[.integer(1)]])
            await connection.close()
        }
    }

    @Test("a file database uses WAL and survives reopening", arguments: TestBackend.selected)
    func fileDatabase(_ backend: TestBackend) async throws {
        var template = Array("/tmp/anyruntime-sqlite-XXXXXX".utf8CString)
        let directory = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
        let path = directory + "/test.db"
        defer {
            for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) }
            rmdir(directory)
        }
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: path)
            let mode = try await connection.execute("PRAGMA journal_mode", [])
            #expect(mode.rows == [[.text("wal")]])
            _ = try await connection.execute("CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER)", [])
            _ = try await connection.execute("INSERT INTO kv VALUES (?, ?)", [.text("a"), .integer(1)])
            await connection.close()
            let reopened = try await SQLiteConnection.open(path: path)
            let rows = try await reopened.execute("SELECT v FROM kv WHERE k = ?", [.text("a")])
            #expect(rows.rows == [[.integer(1)]])
            await reopened.close()
        }
    }

    @Test("text with several statements is refused, in a query and in a stream; one statement with a trailing ';' runs",
          arguments: TestBackend.selected)
    func oneStatementAtATime(_ backend: TestBackend) async throws {
        try await backend.run {
            let connection = try await SQLiteConnection.open(path: nil)
            for _ in 0..<200 {  // the tail check once read freed memory: repeat to give it a chance to show
                #expect(try await connection.execute("SELECT 1;  ", []).rows == [[.integer(1)]])
            }
            await #expect { _ = try await connection.execute("SELECT 1; SELECT 2", []) } throws: { ($0 as? SQLError)?.kind == .misuse }
            await #expect { _ = try await connection.openStream("SELECT 1; DELETE FROM x", []) } throws: { ($0 as? SQLError)?.kind == .misuse }
            await connection.close()
        }
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

@Suite("SQLite URL modes", .limit(minutes: 1))
struct SQLiteURLModeTests {
    @Test("?mode= is parsed, not taken as part of the file name; unknown parameters are refused")
    func parsing() throws {
        let url = try DatabaseURL("sqlite:///data/app.db?mode=ro")
        #expect(url.sqlitePath == "data/app.db")
        #expect(url.parameters.map(\.key) == ["mode"] && url.parameters.map(\.value) == ["ro"])
        #expect(url.description == "sqlite:///data/app.db?mode=ro")
        #expect(try DatabaseURL("sqlite:///odd%3Fname.db").sqlitePath == "odd?name.db")
        #expect { try DatabaseURL("sqlite:///app.db?mode=readonly") } throws: { ($0 as? SQLError)?.kind == .invalidURL }
        #expect { try DatabaseURL("sqlite:///app.db?cache=shared") } throws: { ($0 as? SQLError)?.kind == .invalidURL }
        // SQLite's name for an in-memory database stays one with parameters, never a file named ":memory:"; a
        // mode that only a file can have is refused.
        for memory in ["sqlite:///:memory:", "sqlite:///:memory:?mode=rwc", "sqlite:///%3Amemory%3A"] {
            #expect(try DatabaseURL(memory).sqlitePath == nil, "\(memory)")
        }
        for mode in ["ro", "rw"] {
            #expect { try DatabaseURL("sqlite:///:memory:?mode=\(mode)") } throws: { ($0 as? SQLError)?.kind == .invalidURL }
        }
    }

    @Test("mode=ro opens an existing file read-only and never creates one; mode=rw does not create either",
          arguments: TestBackend.selected)
    func modes(_ backend: TestBackend) async throws {
        var template = Array("/tmp/anyruntime-mode-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ $0.baseAddress.flatMap { mkdtemp($0) } }) else {
            throw SQLError(.connection, "mkdtemp failed")
        }
        let directory = String(cString: made)
        let path = directory + "/app.db"
        defer {
            for suffix in ["", "-wal", "-shm", "?mode=ro"] { unlink(path + suffix) }
            unlink(directory + "/missing.db")
            rmdir(directory)
        }
        try await backend.run {
            let writer = try Engine("sqlite:///" + path, logger: quietLogger)
            try await writer.withConnection { connection in
                try await connection.executeScript("CREATE TABLE t (n INTEGER); INSERT INTO t VALUES (7);")
            }
            await writer.dispose()
            let reader = try Engine("sqlite:///" + path + "?mode=ro", logger: quietLogger)
            try await reader.withConnection { connection in
                let n = try await connection.execute("SELECT n FROM t").scalar(Int.self)
                #expect(n == 7)
                await #expect(throws: SQLError.self) { _ = try await connection.execute("INSERT INTO t VALUES (\(8))") }
            }
            await reader.dispose()
            #expect(access(path + "?mode=ro", F_OK) != 0, "a file named after the whole URL was created")
            for mode in ["ro", "rw"] {
                let missing = try Engine("sqlite:///" + directory + "/missing.db?mode=" + mode, logger: quietLogger)
                await #expect { try await missing.withConnection { _ in } } throws: { ($0 as? SQLError)?.kind == .connection }
                await missing.dispose()
                #expect(access(directory + "/missing.db", F_OK) != 0, "mode=\(mode) created the file")
            }
        }
    }
}
