import FoundationEssentials
import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// Values that cannot round-trip are typed errors, never altered: Dates no timestamp holds, text that is not
/// UTF-8, identifiers PostgreSQL would truncate, defaults under `standard_conforming_strings=off`.
extension SQLValue {
    var isUnrepresentable: Bool { unstorableReason != nil }
}

@Suite("Values never silently altered", .limit(minutes: 1))
struct ValueFidelityTests {
    static let unstorableDates: [Date] = [
        Date(timeIntervalSince1970: .nan), Date(timeIntervalSince1970: .infinity), Date(timeIntervalSince1970: -.infinity),
        Date(timeIntervalSince1970: 1e13), Date(timeIntervalSince1970: -1e13),  // about ±317,000 years
    ]

    @Test("Dates that are NaN, infinite or beyond ±292,000 years are refused before anything is sent",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func unstorableDates(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await database.withPrivateConnection(backend) { connection in
            try await connection.execute("CREATE TABLE moments (id INTEGER, at TEXT)")
            for (index, date) in Self.unstorableDates.enumerated() {
                await #expect {
                    try await connection.execute("INSERT INTO moments VALUES (\(index), \(date))")
                } throws: { error in
                    guard let error = error as? SQLError else { return false }
                    return error.kind == .invalidParameter && error.message.contains("has no timestamp")
                        && error.message.contains(database == .postgresql ? "parameter $2:" : "parameter 2:")
                }
            }
            #expect(try await connection.execute("SELECT count(*) FROM moments").scalar(Int.self) == 0, "nothing was stored")
            // The edge that is representable still round-trips exactly.
            let far = Date(timeIntervalSince1970: 9e12)  // about year 287,000
            try await connection.execute("INSERT INTO moments VALUES (\(99), \(far))")
            #expect(try await connection.execute("SELECT at FROM moments WHERE id = \(99)").scalar(Date.self) == far)
            if database == .postgresql {
                // As a timestamptz too: a six-digit year both ways.
                #expect(try await connection.execute("SELECT CAST(\(far) AS TIMESTAMPTZ)").scalar(Date.self) == far)
            }
            // The edge itself: the last Date below 2^63 microseconds since 1970 is stored, the next one is not.
            let last = Date(timeIntervalSinceReferenceDate: 9_222_393_729_654.775_390_625)
            #expect(last.sqlValue == .text("294247-01-10 04:00:54.775391+00:00"))
            #expect(Date(timeIntervalSinceReferenceDate: last.timeIntervalSinceReferenceDate.nextUp).sqlValue.isUnrepresentable)
            #expect(!Date(timeIntervalSince1970: 9_223_372_035_854).sqlValue.isUnrepresentable)
            // And at the other end, within the range's last second, where whole seconds alone would overflow.
            let first = Date(timeIntervalSinceReferenceDate: -9_224_350_344_054.775)
            #expect(!first.sqlValue.isUnrepresentable, "\(first.timeIntervalSince1970)")
            #expect(Date(timeIntervalSinceReferenceDate: -9_224_350_344_054.777).sqlValue.isUnrepresentable)
        }
    }

    @Test("a default of a column that is an unstorable Date is refused, naming the column")
    func unstorableDefault() {
        let table = Table("t", columns: [
            ColumnDefinition(name: "at", type: .timestamp, nullable: true, options: [.default(Date(timeIntervalSince1970: .nan))])
        ])
        for dialect in [SQLDialect.postgresql, .sqlite] {
            #expect { try Metadata(tables: [table]).createStatements(for: dialect) } throws: {
                ($0 as? SQLError)?.kind == .invalidParameter && "\($0)".contains("at'")
            }
        }
    }

    @Test("a PostgreSQL timestamp beyond what a Date holds says it is out of range, not malformed",
          arguments: TestBackend.selected)
    func timestampOutOfRange(_ backend: TestBackend) async throws {
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            await #expect {
                try await connection.execute("SELECT CAST('294270-06-01 00:00:00+00' AS TIMESTAMPTZ) AS far").one().decode(0, as: Date.self)
            } throws: { error in
                guard let error = error as? SQLError else { return false }
                return error.kind == .decoding && error.message.contains("far") && error.message.contains("out of the range")
            }
        }
        #expect { try Date(sqlValue: .text("2026-13-01"), column: "c") } throws: { "\($0)".contains("not a timestamp") }
        #expect { try Date(sqlValue: .text("12345-13-99 junk"), column: "c") } throws: { "\($0)".contains("not a timestamp") }
    }

    @Test("text that is not valid UTF-8 arrives as its bytes: decoding it as a String is a typed error naming the column",
          arguments: TestBackend.selected)
    func invalidUTF8SQLite(_ backend: TestBackend) async throws {
        try await TestDatabase.sqlite.withPrivateConnection(backend) { connection in
            let row = try await connection.execute("SELECT CAST(x'ff41c3' AS TEXT) AS raw").one()
            #expect { try row.decode("raw", as: String.self) } throws: {
                ($0 as? SQLError)?.kind == .decoding && "\($0)".contains("raw") && "\($0)".contains("UTF-8")
            }
            #expect(try row.decode("raw", as: [UInt8].self) == [0xFF, 0x41, 0xC3])
            #expect(try await connection.execute("SELECT CAST(x'c3a9' AS TEXT)").scalar(String.self) == "é")
        }
    }

    @Test("PostgreSQL: text from a SQL_ASCII database that is not UTF-8 is refused by the server (the driver asks for UTF-8), never altered",
          arguments: TestBackend.selected)
    func invalidUTF8Postgres(_ backend: TestBackend) async throws {
        let name = "ascii_\(backend)_\(UInt32.random(in: 0...UInt32.max))"
        let admin = Engine(url: try postgresURL(direct: true), pool: .patient, logger: quietLogger)
        let url = try postgresURLString(database: name)
        try await backend.run {
            try await admin.withConnection { connection in
                try await connection.execute(.unsafeRaw("CREATE DATABASE \(name) ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"))
            }
            let engine = try Engine(url, pool: .patient, logger: quietLogger)
            try await engine.withConnection { connection throws in
                // The server converts to the client encoding the driver forces (UTF8) and checks the bytes.
                await #expect { try await connection.execute("SELECT convert_from('\\xff41'::bytea, 'SQL_ASCII') AS raw") } throws: {
                    ($0 as? SQLError)?.sqlState == "22021"
                }
                let accent = try await connection.execute("SELECT convert_from('\\xc3a9'::bytea, 'SQL_ASCII')").scalar(String.self)
                #expect(accent == "é")
            }
            await engine.dispose()
            try await admin.withConnection { try await $0.execute(.unsafeRaw("DROP DATABASE \(name) WITH (FORCE)")) }  // a pooler keeps its server connections
            await admin.dispose()
        }
    }

    @Test("PostgreSQL refuses identifiers over 63 bytes before sending (they would be truncated); SQLite keeps them",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func longIdentifiers(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let long = "t_" + String(repeating: "x", count: 70)
        let limit = "t_" + String(repeating: "y", count: 61)  // 63 bytes
        try await database.withPrivateConnection(backend) { connection in
            if database == .postgresql {
                await #expect { try await connection.execute("CREATE TABLE \(SQL.identifier(long)) (id int)") } throws: {
                    ($0 as? SQLError)?.kind == .invalidParameter && "\($0)".contains("63")
                }
                await #expect { try await connection.execute(.unsafeRaw("SELECT 1 AS \(long)")) } throws: {
                    ($0 as? SQLError)?.kind == .invalidParameter
                }
                await #expect { try await connection.executeScript("CREATE TABLE \(long) (id int)") } throws: {
                    ($0 as? SQLError)?.kind == .invalidParameter
                }
            } else {
                try await connection.execute("CREATE TABLE \(SQL.identifier(long)) (id INTEGER)")
                try await connection.execute("INSERT INTO \(SQL.identifier(long)) VALUES (\(1))")
                #expect(try await connection.execute("SELECT count(*) FROM \(SQL.identifier(long))").scalar(Int.self) == 1)
            }
            try await connection.execute("CREATE TABLE \(SQL.identifier(limit)) (id INTEGER)")
            #expect(try await connection.execute("SELECT count(*) FROM \(SQL.identifier(limit))").scalar(Int.self) == 0)
        }
    }

    @Test("the identifier scanner skips strings, dollar quotes and comments")
    func identifierScanner() {
        let long = String(repeating: "a", count: 64)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT \(long) FROM t") == long)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT \"\(long)\"") == long)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT \"\(String(repeating: "é", count: 32))\"") != nil, "64 bytes")
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT \"\(String(repeating: "é", count: 31))\"") == nil, "62 bytes")
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT '\(long)', E'\\'\(long)', $$\(long)$$, $q$ $$ \(long) $q$") == nil)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT 1 -- \(long)\n, 2 /* /* \(long) */ \(long) */ FROM t") == nil)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT $1, $2 FROM \(String(repeating: "b", count: 63))") == nil)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT 'it''s' AS \(long)") == long)
        // Only a one-letter E opens an escape string: after `name` a backslash in '…' is an ordinary byte.
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT name'\\' AS \(long)") == long)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT E'\\' AS \(long)'") == nil, "inside the escape string")
        // With standard_conforming_strings off, '\'' does not end the literal.
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT 'a\\' \(long)'", backslashEscapes: true) == nil)
        #expect(PostgresIdentifiers.firstTooLong(in: "SELECT 'a\\' \(long)'", backslashEscapes: false) == long)
    }

    @Test("column defaults keep their backslashes when the server has standard_conforming_strings off",
          arguments: TestBackend.selected)
    func defaultsWithoutStandardStrings(_ backend: TestBackend) async throws {
        let url = try postgresURLString(query: "options=-c%20standard_conforming_strings%3Doff", direct: true)  // startup options: a pooler drops them
        let engine = try Engine(url, pool: .patient, logger: quietLogger)
        let name = "defaults_\(backend)_\(UInt32.random(in: 0...UInt32.max))"
        let text = #"C:\temp\new 'quoted' \\ end\"#
        let bytes: [UInt8] = [0x5C, 0x00, 0x27, 0xFF]
        let table = Table(name, columns: [
            ColumnDefinition(name: "id", type: .int64, nullable: false, options: [.primaryKey]),
            ColumnDefinition(name: "path", type: .text, nullable: false, options: [.default(text)]),
            ColumnDefinition(name: "blob", type: .bytes, nullable: false, options: [.default(bytes)]),
        ])
        try await backend.run {
            try await engine.withConnection { connection in
                #expect(try await connection.execute("SHOW standard_conforming_strings").scalar(String.self) == "off")
                try await Metadata(tables: [table]).createAll(on: connection)
                try await connection.execute("INSERT INTO \(SQL.identifier(name)) (id) VALUES (\(1))")
                let row = try await connection.execute("SELECT path, blob FROM \(SQL.identifier(name))").one()
                #expect(try row.decode("path", as: String.self) == text)
                #expect(try row.decode("blob", as: [UInt8].self) == bytes)
                try await connection.execute("DROP TABLE \(SQL.identifier(name))")
            }
            await engine.dispose()
        }
    }
}
