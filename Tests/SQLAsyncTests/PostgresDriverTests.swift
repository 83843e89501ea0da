import Foundation
import Runtime
import RuntimeTesting
import TestSupport
@testable import SQLAsync
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The server the tests use: ANYRUNTIME_PG_URL, or a throw-away cluster started once per test process
/// (`TestPostgres`). Without either the PostgreSQL tests fail and say why — they never skip.
func postgresURL(direct: Bool = false) throws -> DatabaseURL {
    try DatabaseURL(try postgresURLString(direct: direct))
}

/// A connection straight from the driver, as these tests open them: a grace of 5 s, and the patient pool's
/// connect timeout (60 s under a sanitizer, where a connect beside the whole suite once took more than the
/// default 10 s).
func driverConnection(_ url: DatabaseURL) async throws -> PostgresConnection {
    try await PostgresConnection.connect(url, timeout: PoolConfiguration.patient.connectTimeout, grace: .seconds(5))
}

/// The test server's URL as text (its password, if any, kept), naming `database` instead of the test
/// database and with `query` (`key=value&…`) added to its parameters.
///
/// `direct`: the server itself even when the suite runs through a pooler — for tests whose subject is one
/// server session (see `TestPostgres.directURL()`).
func postgresURLString(database: String? = nil, query: String? = nil, direct: Bool = false) throws -> String {
    let base: String
    do {
        base = direct ? try TestPostgres.directURL() : try TestPostgres.url()
    } catch let unavailable {
        throw SQLError(.connection, unavailable.description)
    }
    guard let slash = base.lastIndex(of: "/") else { throw SQLError(.invalidURL, "unexpected test URL") }
    let existing = base[slash...].firstIndex(of: "?").map { String(base[base.index(after: $0)...]) }
    let path = database ?? String(base[base.index(after: slash)...].prefix { $0 != "?" })
    let parameters = [existing, query].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: "&")
    return String(base[..<slash]) + "/" + path + (parameters.isEmpty ? "" : "?" + parameters)
}

@Suite("PostgreSQL driver", .limit(minutes: 1))
struct PostgresDriverTests {
    @Test("connects through the runtime's readiness waits and round-trips values exactly",
          arguments: TestBackend.selected)
    func roundTrip(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            let rows = try await connection.execute(
                "SELECT $1::int8, $2::int8, $3::float8, $4::text, $5::text, $6::bytea, $7::bool, $8::text, $9::int2",
                [
                    .integer(.max), .integer(.min), .double(-0.1), .text("héllo ✓ 日本"), .text(""),
                    .bytes([0, 255, 7]), .bool(true), .null, .integer(-32768),
                ])
            #expect(
                rows.rows == [[
                    .integer(.max), .integer(.min), .double(-0.1), .text("héllo ✓ 日本"), .text(""),
                    .bytes([0, 255, 7]), .bool(true), .null, .integer(-32768),
                ]])
            _ = try await connection.execute("CREATE TEMP TABLE t (id serial PRIMARY KEY, name text UNIQUE)", [])
            let inserted = try await connection.execute(
                "INSERT INTO t (name) VALUES ($1), ($2)", [.text("a"), .text("b")])
            #expect(inserted.rowsAffected == 2)
            let many = try await connection.execute("SELECT g FROM generate_series(1, 5000) g", [])
            #expect(many.rows.count == 5000 && many.rows.last == [.integer(5000)])
            await connection.close()
        }
    }

    @Test("errors are typed with SQLSTATE and the SQL, never the values", arguments: TestBackend.selected)
    func errors(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            _ = try await connection.execute("CREATE TEMP TABLE u (name text UNIQUE)", [])
            _ = try await connection.execute("INSERT INTO u VALUES ($1)", [.text("secret-value")])
            do {
                _ = try await connection.execute("INSERT INTO u VALUES ($1)", [.text("secret-value")])
                Issue.record("a duplicate was accepted")
            } catch let error as SQLError {
                #expect(error.kind == .constraint)
                #expect(error.sqlState == "23505")
                #expect(error.sql == "INSERT INTO u VALUES ($1)")
                #expect(!error.description.contains("secret-value"))
            }
            do {
                _ = try await connection.execute("SELEC 1", [])
                Issue.record("bad syntax was accepted")
            } catch let error as SQLError {
                #expect(error.kind == .syntax && error.sqlState == "42601")
            }
            // The connection is still usable after errors.
            #expect(try await connection.execute("SELECT 1", []).rows == [[.integer(1)]])
            await connection.close()
        }
    }

    @Test("a bad password or an unreachable server is a typed connection error without the password")
    func connectionErrors() async throws {
        let url = try postgresURL(direct: true)
        try await TestBackend.uv.run {
            let bad = try DatabaseURL("postgresql://nobody:hunter2@127.0.0.1:1/none")
            do {
                _ = try await PostgresConnection.connect(bad)
                Issue.record("connected to a closed port")
            } catch let error as SQLError {
                #expect(error.kind == .connection)
                #expect(!error.description.contains("hunter2"))
            }
            _ = url
        }
    }

    @Test("the last look at the socket before a statement is called in doubt sees an answer already there")
    func readyNow() throws {
        var ends: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { for end in ends { _ = close(end) } }
        // Nothing to read yet: no answer (nil), though the socket could be written.
        #expect(PostgresConnection.readyNow(ends[0], for: .read) == nil)
        #expect(PostgresConnection.readyNow(ends[0], for: [.read, .write]) == .write)
        // An answer arrived: seen without waiting.
        var byte: UInt8 = 1
        #expect(write(ends[1], &byte, 1) == 1)
        #expect(PostgresConnection.readyNow(ends[0], for: .read) == .read)
        // A peer gone counts as readable: reading then says what happened.
        _ = close(ends[1])
        ends[1] = -1
        #expect(read(ends[0], &byte, 1) == 1)
        #expect(PostgresConnection.readyNow(ends[0], for: .read) == .read)
    }

    @Test("a clean-up whose deadline passed looks once more, without waiting, before it gives up",
          arguments: TestBackend.selected)
    func settlingLastLook(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            var ends: [Int32] = [-1, -1]
            #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
            defer { for end in ends { _ = close(end) } }
            #expect(fcntl(ends[0], F_SETFL, fcntl(ends[0], F_GETFL) | O_NONBLOCK) == 0)
            let fd = ends[0]
            // One clean-up that waits for the socket to be readable: its result, and whether each pass was the
            // last look.
            func settle(until deadline: RuntimeInstant, returning value: Int) async throws -> (Int?, [Bool]) {
                var passes: [Bool] = []
                let result: Int? = try await connection.settling(until: deadline, fd: fd) { waitFor, lastLook in
                    passes.append(lastLook)
                    _ = try await waitFor(.read)
                    return value
                }
                return (result, passes)
            }
            let past = try Runtime.current.now
            // The deadline passed before the answer could be waited for (a stalled process), and nothing is
            // there: no answer, at once.
            let silent = try await settle(until: past, returning: 1)
            #expect(silent.0 == nil && silent.1 == [false, true])
            // The answer is there by the time the deadline is seen: taken, not given up.
            var byte: UInt8 = 1
            #expect(write(ends[1], &byte, 1) == 1)
            let answered = try await settle(until: past, returning: 2)
            #expect(answered.0 == 2 && answered.1 == [false, true])
            // The look reads only so much: a socket that stays readable (a statement still sending) is no answer.
            var looks = 0
            let endless: Int? = try await connection.settling(until: past, fd: fd) { waitFor, lastLook in
                while true {
                    _ = try await waitFor(.read)
                    if lastLook { looks += 1 }
                }
            }
            #expect(endless == nil && looks == PostgresConnection.lastLookReads)
            // Before the deadline, the first pass waits as usual.
            let waited = try await settle(until: try Runtime.current.now.advanced(by: .seconds(30)), returning: 3)
            #expect(waited.0 == 3 && waited.1 == [false])
            // A socket the runtime watched is forgotten before it is closed.
            try await Runtime.current.forget(fd: fd)
            await connection.close()
        }
    }

    @Test("a cancelled pg_sleep is gone from the server within 0.5 s and the connection stays clean",
          arguments: TestBackend.selected)
    func cancellation(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            let observer = try await driverConnection(url)
            // Cancel requests go out without blocking: libpq's key was read (PQcancel is only the fallback).
            let key = try #require(connection.cancelKey.withLock { $0 }, "the cancel key could not be read")
            let pid = try await connection.execute("SELECT pg_backend_pid()", []).values.first
            #expect(pid == .integer(Int64(key.processID)) && key.family == AF_INET)
            #expect(key.packet.count == 16 && Array(key.packet[0..<8]) == [0, 0, 0, 16, 0x04, 0xD2, 0x16, 0x2E])
            // A marker unique to this run: other backends run the same test against the same server.
            let marker = "cancel-me-\(backend)-\(UInt32.random(in: 0...UInt32.max))"
            let result: RawRows? = try await moveOnAfter(.milliseconds(100)) { _ in
                try await connection.execute("SELECT pg_sleep(10) /* \(marker) */", [])
            }
            #expect(result == nil, "pg_sleep was not cancelled")
            #expect(!connection.isBroken, "the connection was not cleaned up")
            // The server side is gone (the clean-up waited for it) …
            let active = try await observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()",
                [.text("%\(marker)%")])
            #expect(active.rows == [[.integer(0)]], "the cancelled query still runs on the server")
            // … and no late cancel hits the next query.
            let next = try await connection.execute("SELECT pg_sleep(0.2), 42", [])
            #expect(next.rows.first?.last == .integer(42))
            // Text PostgreSQL cannot store is refused, not cut short.
            do {
                _ = try await connection.execute("SELECT $1::text", [.text("nul\u{0}inside")])
                Issue.record("text with a NUL byte was accepted")
            } catch let error as SQLError {
                #expect(error.kind == .misuse)
            }
            await connection.close()
            await observer.close()
        }
    }

    @Test("connects cancelled at every stage leave no readiness registration behind",
          arguments: TestBackend.selected.filter { $0 != .virtual })
    func cancelledConnects(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let runtime = try Runtime.current
            let before = runtime.backend.diagnostics().watchedDescriptors
            // Deadlines from 0 to twice a measured connect land before, during and after the start-up
            // exchange. A registration outliving its socket would make a later socket with the same number
            // wait forever (the bug this guards against hung the pool torture test).
            let start = runtime.now
            await (try await driverConnection(url)).close()
            let connectTime = start.duration(to: runtime.now)
            var connected = 0
            for step in 0..<150 {
                let opened: PostgresConnection? = try await moveOnAfter(connectTime * 2 * (Double(step % 30) / 30)) { _ in
                    try await driverConnection(url)
                }
                if let opened {
                    connected += 1
                    await opened.close()
                }
                #expect(runtime.backend.diagnostics().watchedDescriptors == before, "after step \(step)")
            }
            // The same fd numbers are reused at once by working connections.
            for _ in 0..<5 {
                let connection = try await driverConnection(url)
                #expect(try await connection.execute("SELECT 1", []).rows == [[.integer(1)]])
                await connection.close()
            }
            #expect(connected < 150, "no connect was cancelled")
        }
    }

    @Test("statements are prepared once per connection, survive DISCARD ALL and table changes, and stay bounded",
          arguments: TestBackend.selected)
    func preparedStatements(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            func preparedCount(_ text: String) async throws -> RawRows {
                try await connection.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement = $1", [.text(text)])
            }
            let query = "SELECT $1::int8 + 1"
            for value in 0..<3 {
                #expect(try await connection.execute(query, [.integer(Int64(value))]).rows == [[.integer(Int64(value) + 1)]])
            }
            #expect(try await preparedCount(query).rows == [[.integer(1)]], "not prepared exactly once")
            // From its second run a statement whose columns all decode from binary gets binary results: the
            // same values as text.
            let mixed = """
                SELECT $1::int2, $2::int4, $3::int8, $4::float4, $5::float8, $6::bool, $7::bytea, $8::text,
                       $9::varchar, NULL::int8, 'pg_class'::regclass::oid, $10::float8, $11::float4
                """
            let binds: [SQLValue] = [
                .integer(-32768), .integer(-2_147_483_648), .integer(.min), .double(Double(Float(0.1))), .double(-0.1),
                .bool(true), .bytes([0, 255, 0x5C, 0x78]), .text("héllo"), .text(""), .double(.infinity), .double(-.infinity),
            ]
            let first = try await connection.execute(mixed, binds)
            let second = try await connection.execute(mixed, binds)
            #expect(first.rows == second.rows)
            #expect(second.rows.first?.prefix(10).map { $0 } == [
                .integer(-32768), .integer(-2_147_483_648), .integer(.min), .double(Double(Float(0.1))), .double(-0.1),
                .bool(true), .bytes([0, 255, 0x5C, 0x78]), .text("héllo"), .text(""), .null,
            ])
            #expect(second.rows.first?.last == .double(-.infinity))
            // The server forgets every prepared statement: the next run prepares again, unseen by the caller.
            _ = try await connection.execute("DISCARD ALL", [])
            #expect(try await connection.execute(query, [.integer(41)]).rows == [[.integer(42)]])
            // A table whose columns change under a cached SELECT *.
            _ = try await connection.execute("CREATE TEMP TABLE shape (a int8)", [])
            _ = try await connection.execute("INSERT INTO shape VALUES (1)", [])
            #expect(try await connection.execute("SELECT * FROM shape", []).rows == [[.integer(1)]])
            _ = try await connection.execute("ALTER TABLE shape ADD COLUMN b text DEFAULT 'x'", [])
            #expect(try await connection.execute("SELECT * FROM shape", []).rows == [[.integer(1), .text("x")]])
            // A statement that does not parse is not kept; the connection goes on.
            await #expect { try await connection.execute("SELEC 1", []) } throws: { ($0 as? SQLError)?.kind == .syntax }
            #expect(try await preparedCount("SELEC 1").rows == [[.integer(0)]])
            // More distinct statements than the cache holds: the oldest are deallocated on the server too.
            for index in 0..<140 { _ = try await connection.execute("SELECT \(index)", []) }
            let total = try await connection.execute("SELECT count(*) FROM pg_prepared_statements", [])
            #expect(total.rows.first?.first.flatMap { if case .integer(let n) = $0 { n } else { nil } }.map { $0 <= 128 } == true,
                    "\(total.rows)")
            // Statements that refuse to share a transaction run with evictions pending.
            _ = try await connection.execute("VACUUM shape", [])
            _ = try await connection.execute("CREATE INDEX CONCURRENTLY ON shape (a)", [])
            // The server forgets them all while the cache is full: the evictions' DEALLOCATEs fail, the cache
            // learns what the server has, and the statements run.
            _ = try await connection.execute("DISCARD ALL", [])
            for index in 200..<210 {
                #expect(try await connection.execute("SELECT \(index)", []).rows == [[.integer(Int64(index))]])
            }
            let after = try await connection.execute("SELECT count(*) FROM pg_prepared_statements", [])
            #expect(after.rows.first?.first.flatMap { if case .integer(let n) = $0 { n } else { nil } }.map { $0 <= 12 } == true,
                    "\(after.rows)")
            await connection.close()
        }
    }

    @Test("RETURNING counts affected rows; COPY is refused with a typed error and the connection goes on",
          arguments: TestBackend.selected)
    func returningAndCopy(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        try await backend.run {
            let connection = try await driverConnection(url)
            _ = try await connection.execute("CREATE TEMP TABLE r (id serial PRIMARY KEY, name text)", [])
            let inserted = try await connection.execute("INSERT INTO r (name) VALUES ($1), ($2) RETURNING id", [.text("a"), .text("b")])
            #expect(inserted.rows.count == 2 && inserted.rowsAffected == 2)
            #expect(try await connection.execute("SELECT id FROM r", []).rowsAffected == 0)
            for copy in ["COPY r FROM STDIN", "COPY r TO STDOUT", "COPY (SELECT generate_series(1, 100000)) TO STDOUT"] {
                await #expect { _ = try await connection.execute(copy, []) } throws: { ($0 as? SQLError)?.kind == .misuse }
                #expect(!connection.isBroken)
                #expect(try await connection.execute("SELECT count(*) FROM r", []).rows == [[.integer(2)]])
            }
            await connection.close()
        }
    }

    @Test("a host name is resolved off the loop and every address it has is given to libpq to try in turn",
          arguments: TestBackend.selected)
    func everyAddressTried(_ backend: TestBackend) async throws {
        let url = try postgresURL(direct: true)
        guard url.host == "127.0.0.1", let port = url.port else { return }  // a server of the environment's own
        let byName = try DatabaseURL("postgresql://\(url.user ?? "postgres")@localhost:\(port)/\(url.databaseName ?? "postgres")")
        try await backend.run {
            let connection = try await PostgresConnection.connect(byName)
            #expect(try await connection.execute("SELECT 1", []).rows == [[.integer(1)]])
            await connection.close()
        }
    }

    @Test("closing a connection while another task's query runs on it: the query ends, then the connection closes",
          arguments: TestBackend.selected)
    func closeDuringQuery(_ backend: TestBackend) async throws {
        let engine = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            let connection = try await engine.connect()
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    // Finishes (or fails cleanly): the close waits for it instead of freeing libpq under it.
                    _ = try? await connection.execute("SELECT pg_sleep(1)")
                }
                try await Runtime.waitAllTasksBlocked()  // the query is sent and awaits its answer
                await connection.close()
            }
            #expect(connection.isBroken, "a connection closed under a call went back to the pool")
            let statistics = try engine.poolStatistics()
            #expect(statistics.open == statistics.idle)
            #expect(try await engine.withConnection { try await $0.execute("SELECT \(5)").scalar(Int.self) } == 5)
            await engine.dispose()
        }
    }
}

@Suite("PostgreSQL session settings", .limit(minutes: 1))
struct PostgresSessionSettingsTests {
    @Test("a database whose defaults are LATIN1 text and SQL-style dates cannot alter values: UTF-8 and ISO are forced",
          arguments: TestBackend.selected)
    func hostileDatabaseDefaults(_ backend: TestBackend) async throws {
        let name = "anyrt_settings_\(UInt32.random(in: 0...UInt32.max))"
        let other = try DatabaseURL(try postgresURLString(database: name))
        let admin = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        try await backend.run {
            try await admin.withConnection { connection in
                try await connection.execute(.unsafeRaw("CREATE DATABASE \(name)"))
                try await connection.execute(.unsafeRaw("ALTER DATABASE \(name) SET client_encoding = 'LATIN1'"))
                try await connection.execute(.unsafeRaw("ALTER DATABASE \(name) SET DateStyle = 'SQL, DMY'"))
            }
            let engine = Engine(url: other, logger: quietLogger)
            do {
                try await engine.withConnection { connection in
                    let text = "é ü 漢字 🚀"
                    #expect(try await connection.execute("SELECT \(text)::text").scalar(String.self) == text)
                    #expect(try await connection.execute("SHOW DateStyle").scalar(String.self)?.hasPrefix("ISO") == true)
                    #expect(try await connection.execute("SHOW client_encoding").scalar(String.self) == "UTF8")
                    let date = Date(timeIntervalSince1970: 1_700_000_000.123456)
                    let back = try await connection.execute("SELECT \(date)::timestamptz").scalar(Date.self)
                    #expect(back == date)
                }
            } catch {
                Issue.record("\(error)")
            }
            await engine.dispose()
            try await admin.withConnection { connection in
                try await connection.execute(.unsafeRaw("DROP DATABASE \(name) WITH (FORCE)"))  // a pooler keeps its server connections
            }
            await admin.dispose()
        }
    }
}
