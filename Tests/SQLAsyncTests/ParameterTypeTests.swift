import FoundationEssentials
import Runtime
import SQLAsync
import TestSupport
import Testing

@Suite("Parameter types and column metadata", .limit(minutes: 1))
struct ParameterTypeTests {
    @Test("integers bind with the parameter's own type: int4 functions, int2 columns, range checked before sending",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func integerParameters(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await connection.execute(
                "CREATE TABLE widths (small SMALLINT, regular INTEGER, big BIGINT, ratio REAL, label TEXT)")
            // The same statement twice: the first run prepares it, the second runs it by name.
            for round in 0..<2 {
                try await connection.execute(
                    "INSERT INTO widths VALUES (\(Int16.max - Int16(round)), \(Int32.min + Int32(round)), \(Int64.max - Int64(round)), \(16_777_216), \("x"))")
            }
            let rows = try await connection.execute("SELECT small, regular, big FROM widths ORDER BY small DESC")
            #expect(try rows.first()?.decode("small", as: Int16.self) == Int16.max)
            #expect(try rows.first()?.decode("regular", as: Int32.self) == Int32.min)
            #expect(try rows.first()?.decode("big", as: Int64.self) == Int64.max)
            // A bare parameter stays an integer (PostgreSQL would infer text for it).
            #expect(try await connection.execute("SELECT \(42) AS answer").scalar(Int.self) == 42)
            #expect(try await connection.execute("SELECT \(Int64.max) - \(1) AS answer").scalar(Int64.self) == Int64.max - 1)
            // Integers the server would type as text (VALUES), summed: int8 as before, not "sum(text)".
            #expect(try await connection.execute(
                "SELECT CAST(sum(column1) AS BIGINT) FROM (VALUES (\(2)), (\(3))) AS t").scalar(Int.self) == 5)
            guard database == .postgresql else { return }
            // Functions that take int4 are found (bound as int8, this was 42883: no such function).
            // (In one transaction: through a pooler, two autocommitted statements may reach two server sessions.)
            try await connection.withTransaction { connection in
                let pid = try #require(try await connection.execute("SELECT pg_backend_pid()").scalar(Int.self))
                #expect(try await connection.execute("SELECT \(pid) = pg_backend_pid()").scalar(Bool.self) == true)
            }
            #expect(try await connection.execute("SELECT pg_cancel_backend(\(0))").scalar(Bool.self) == false)
            // Out of range for the parameter's type: refused before anything is sent, naming the parameter.
            func expectRefused(_ sql: SQL, naming type: String) async {
                do {
                    try await connection.execute(sql)
                    Issue.record("an out-of-range integer was accepted: \(sql)")
                } catch let error as SQLError {
                    #expect(error.kind == .invalidParameter && error.message.contains("$1") && error.message.contains(type), "\(error)")
                } catch {
                    Issue.record("\(error)")
                }
            }
            // Twice: on the first run (just described) and on a run by name.
            for _ in 0..<2 { await expectRefused("INSERT INTO widths (small) VALUES (\(Int(Int16.max) + 1))", naming: "smallint") }
            await expectRefused("UPDATE widths SET regular = \(Int(Int32.max) + 1) WHERE small = \(1)", naming: "int4")
            // A float4 parameter holds integers up to 2^24 exactly: beyond, refused rather than rounded.
            await expectRefused("INSERT INTO widths (ratio) VALUES (\(16_777_217))", naming: "float4")
            // Nothing of the refused statements reached the table; the connection is still usable.
            #expect(try await connection.execute("SELECT count(*) FROM widths").scalar(Int.self) == 2)
            // An integer where the server expects another type is an error, not a silent conversion.
            do {
                try await connection.execute("SELECT \(1) AND true")
                Issue.record("an integer was taken as a boolean")
            } catch let error as SQLError {
                #expect(error.sqlState == "42804" || error.sqlState == "42883", "\(error)")
            }
        }
    }

    @Test("results expose the database's column types", arguments: TestBackend.selected, TestDatabase.allCases)
    func columnTypes(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await connection.execute("CREATE TABLE typed (id INTEGER, name VARCHAR(20), amount BIGINT, ok BOOLEAN)")
            try await connection.execute("INSERT INTO typed VALUES (\(1), \("a"), \(2), \(true))")
            for _ in 0..<2 {  // prepared, then run by name (PostgreSQL: binary results from then on)
                let result = try await connection.execute("SELECT id, name, amount, ok, id + 1 AS next FROM typed")
                #expect(result.columns == ["id", "name", "amount", "ok", "next"])
                switch database {
                case .postgresql: #expect(result.columnTypes == ["int4", "varchar", "int8", "bool", "int4"])
                case .sqlite: #expect(result.columnTypes == ["INTEGER", "VARCHAR(20)", "BIGINT", "BOOLEAN", ""])
                }
            }
            // The same statement after the table changed: its new column is there (SQLite prepares it again
            // by itself; the names and types read from the old preparation would be stale).
            let before = try await connection.execute("SELECT * FROM typed")
            #expect(before.columns == ["id", "name", "amount", "ok"])
            try await connection.execute("ALTER TABLE typed ADD COLUMN note TEXT")
            let after = try await connection.execute("SELECT * FROM typed")
            #expect(after.columns == ["id", "name", "amount", "ok", "note"])
            #expect(after.columnTypes.last == (database == .postgresql ? "text" : "TEXT"))
        }
    }
}

@Suite("Parameter limits", .limit(minutes: 1))
struct ParameterLimitTests {
    @Test("a statement with 10,000 parameters runs (PostgreSQL: the description libpq cannot read is skipped), twice",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func manyParameters(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            let count = 10_000
            var sql: SQL = "SELECT count(*), CAST(sum(column1) AS BIGINT) FROM (VALUES "
            for index in 0..<count { sql.append(index == 0 ? "(\(index))" : ", (\(index))") }
            sql.append(") AS t")
            for _ in 0..<2 {
                let row = try #require(try await connection.execute(sql).first())
                #expect(try row.decode(0, as: Int.self) == count)
                #expect(try row.decode(1, as: Int.self) == count * (count - 1) / 2)
            }
            #expect(!connection.isBroken)
            #expect(try await connection.execute("SELECT \(1)").scalar(Int.self) == 1)
        }
    }
}

@Suite("Dates before the common era", .limit(minutes: 1))
struct DatesBCTests {
    @Test("a date BC is written as PostgreSQL writes it and reads back the same, from a table too",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func beforeCommonEra(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            // 15 March 44 BC, 12:00 UTC (proleptic Gregorian), and the first instant of 1 BC.
            let ides = Date(timeIntervalSince1970: -63_517_636_800)
            let firstBC = Date(timeIntervalSince1970: -62_167_219_200)
            try await connection.execute(
                database == .postgresql ? "CREATE TABLE events (at TIMESTAMPTZ)" : "CREATE TABLE events (at TEXT)")
            for date in [ides, firstBC] {
                #expect(try await connection.execute("SELECT \(date) AS at").scalar(Date.self) == date)
                try await connection.execute("INSERT INTO events VALUES (\(date))")
            }
            let stored = try await connection.execute("SELECT at FROM events").scalars(Date.self)
            #expect(Set(stored) == [ides, firstBC])
        }
    }
}
