import FoundationEssentials
import Runtime
import SQLAsync
import TestSupport
import Testing

struct Payload: Codable, Sendable, Equatable {
    var name: String
    var tags: [String]
    var nested: [String: Int]
}

/// One column of every supported type.
enum Samples: TableSchema {
    static let tableName = "samples"
    static let id = Column<Int64>("id", of: Samples.self, .primaryKey, .autoIncrement)
    static let int8 = Column<Int8>("int8", of: Samples.self)
    static let int16 = Column<Int16>("int16", of: Samples.self)
    static let int32 = Column<Int32>("int32", of: Samples.self)
    static let int64 = Column<Int64>("int64", of: Samples.self)
    static let float = Column<Float>("float", of: Samples.self)
    static let double = Column<Double>("double", of: Samples.self)
    static let bool = Column<Bool>("bool", of: Samples.self)
    static let text = Column<String>("text", of: Samples.self)
    static let bytes = Column<[UInt8]>("bytes", of: Samples.self)
    static let date = Column<Date>("date", of: Samples.self)
    static let uuid = Column<UUID>("uuid", of: Samples.self)
    static let decimal = Column<Decimal>("decimal", of: Samples.self)
    static let json = Column<JSON<Payload>>("json", of: Samples.self)
    static let optional = Column<String?>("optional", of: Samples.self)
    static let columns: [any AnyColumn] = [id, int8, int16, int32, int64, float, double, bool, text, bytes, date, uuid, decimal, json, optional]
}

struct Sample: Equatable {
    var int8: Int8, int16: Int16, int32: Int32, int64: Int64
    var float: Float, double: Double, bool: Bool, text: String, bytes: [UInt8]
    var date: Date, uuid: UUID, decimal: Decimal, json: JSON<Payload>, optional: String?
}

@Suite("Types round-trip", .limit(minutes: 1))
struct TypeRoundTripTests {
    static func samples() throws -> [Sample] {
        let payload = try JSON(Payload(name: "ü \"quoted\" ✓", tags: ["a", ""], nested: ["x": -1]))
        return [
            Sample(
                int8: .max, int16: .max, int32: .max, int64: .max, float: 0.1, double: -0.1, bool: true,
                text: "héllo ✓ 日本 👋🏽 'quote' \\ back", bytes: [0, 255, 1, 0], date: Date(timeIntervalSince1970: 1_764_062_205.123456),
                uuid: UUID(), decimal: try #require(Decimal(string: "12345678901234567890.123456789")), json: payload, optional: "x"),
            Sample(
                int8: .min, int16: .min, int32: .min, int64: .min, float: -.greatestFiniteMagnitude, double: .leastNonzeroMagnitude,
                bool: false, text: "", bytes: [], date: Date(timeIntervalSince1970: -12_219_292_800),  // 1582-10-15
                uuid: UUID(), decimal: try #require(Decimal(string: "-0.00000000000000000000000000000000000001")),
                json: payload, optional: nil),
            Sample(
                int8: 0, int16: -1, int32: 1, int64: 0, float: .infinity, double: -.infinity, bool: true, text: String(repeating: "ß", count: 10_000),
                bytes: Array(0...255), date: Date(timeIntervalSince1970: 253_402_300_799.5),  // 9999-12-31 23:59:59.5
                uuid: UUID(), decimal: try #require(Decimal(string: "99999999999999999999999999999999999999")), json: payload, optional: "")
        ]
    }

    @Test("every column type round-trips exactly, extremes included", arguments: TestBackend.selected, TestDatabase.allCases)
    func roundTrip(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let samples = try Self.samples()
        try await Self.withSamplesTable(backend, database) { connection in
            for sample in samples {
                try await connection.execute(insert(into: Samples.self).values(
                    Samples.int8.set(sample.int8), Samples.int16.set(sample.int16), Samples.int32.set(sample.int32),
                    Samples.int64.set(sample.int64), Samples.float.set(sample.float), Samples.double.set(sample.double),
                    Samples.bool.set(sample.bool), Samples.text.set(sample.text), Samples.bytes.set(sample.bytes),
                    Samples.date.set(sample.date), Samples.uuid.set(sample.uuid), Samples.decimal.set(sample.decimal),
                    Samples.json.set(sample.json), Samples.optional.set(sample.optional)))
            }
            let rows = try await connection.execute(select(all: Samples.self).orderBy(Samples.id.asc()))
            #expect(rows.count == samples.count)
            for (row, sample) in zip(rows, samples) {
                let read = Sample(
                    int8: try row.decode("int8"), int16: try row.decode("int16"), int32: try row.decode("int32"),
                    int64: try row.decode("int64"), float: try row.decode("float"), double: try row.decode("double"),
                    bool: try row.decode("bool"), text: try row.decode("text"), bytes: try row.decode("bytes"),
                    date: try row.decode("date"), uuid: try row.decode("uuid"), decimal: try row.decode("decimal"),
                    json: try row.decode("json"), optional: try row.decode("optional"))
                #expect(read.int8 == sample.int8 && read.int16 == sample.int16 && read.int32 == sample.int32 && read.int64 == sample.int64)
                #expect(read.float == sample.float || (read.float.isNaN && sample.float.isNaN))
                #expect(read.double == sample.double || (read.double.isNaN && sample.double.isNaN))
                #expect(read.bool == sample.bool && read.text == sample.text && read.bytes == sample.bytes)
                // Microsecond precision: the stored instant is the sample rounded to a microsecond.
                #expect(abs(read.date.timeIntervalSince(sample.date)) < 0.000_001, "\(read.date) vs \(sample.date)")
                #expect(read.uuid == sample.uuid && read.decimal == sample.decimal && read.json == sample.json)
                #expect(read.optional == sample.optional)
            }
            // Dates compare in time order in the database too.
            let earliest = try await connection.execute(select(Samples.date).from(Samples.self).orderBy(Samples.date.asc()).limit(1))
            #expect(try earliest.scalar(Date.self).map { abs($0.timeIntervalSince1970 - -12_219_292_800) < 0.001 } == true)
        }
    }

    @Test("values a type cannot hold are typed errors naming the column, never altered",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func refusals(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await Self.withSamplesTable(backend, database) { connection in
            func decodingError(_ sql: SQL, as type: (some SQLDecodable).Type) async throws -> SQLError? {
                do {
                    _ = try await connection.execute(sql).one().decode(0, as: type)
                    return nil
                } catch let error as SQLError {
                    return error
                }
            }
            let tooPrecise = database == .postgresql
                ? "SELECT CAST('1234567890123456789012345678901234567890.5' AS NUMERIC) AS wide"
                : "SELECT '1234567890123456789012345678901234567890.5' AS wide" as SQL
            let wide = try await decodingError(tooPrecise, as: Decimal.self)
            #expect(wide?.kind == .decoding && wide?.message.contains("wide") == true, "\(String(describing: wide))")
            // … and read as text, it is exact.
            #expect(try await connection.execute(database == .postgresql ? "SELECT CAST('1234567890123456789012345678901234567890.5' AS NUMERIC)::text" : tooPrecise).scalar(String.self)
                == "1234567890123456789012345678901234567890.5")
            if database == .postgresql {
                let infinite = try await decodingError("SELECT CAST('infinity' AS TIMESTAMPTZ) AS forever", as: Date.self)
                #expect(infinite?.kind == .decoding && infinite?.message.contains("forever") == true)
                #expect(try await connection.execute("SELECT CAST('infinity' AS TIMESTAMPTZ)::text").scalar(String.self) == "infinity")
            }
            let notJSON = try await decodingError("SELECT 'not json' AS doc", as: JSON<Payload>.self)
            #expect(notJSON?.kind == .decoding && notJSON?.message.contains("doc") == true)
            let notUUID = try await decodingError("SELECT 'nope' AS id", as: UUID.self)
            #expect(notUUID?.kind == .decoding)
            let overflow = try await decodingError("SELECT \(Int64(Int16.max) + 1) AS small", as: Int16.self)
            #expect(overflow?.kind == .decoding && overflow?.message.contains("small") == true)
            let null = try await decodingError("SELECT NULL AS missing", as: Date.self)
            #expect(null?.kind == .decoding && null?.message.contains("missing") == true)
            // NaN and -0.0: PostgreSQL stores them; SQLite would turn NaN into NULL and -0.0 into 0.0, so they
            // are refused there.
            if database == .postgresql {
                try await connection.execute(update(Samples.self).set(Samples.double.set(.nan)))
                let negativeZero = try #require(try await connection.execute("SELECT \(-0.0)").scalar(Double.self))
                #expect(negativeZero == 0 && negativeZero.sign == .minus, "-0.0 came back as \(negativeZero)")
            } else {
                await #expect { try await connection.execute("SELECT \(Double.nan)") } throws: { ($0 as? SQLError)?.kind == .misuse }
                await #expect { try await connection.execute(update(Samples.self).set(Samples.double.set(-0.0))) } throws: {
                    ($0 as? SQLError)?.kind == .misuse && "\($0)".contains("-0.0")
                }
            }
            // A JSON value that cannot encode is refused before anything is sent.
            #expect(throws: SQLError.self) { try JSON(Double.nan) }
        }
    }

    @Test("timestamp text in every form the databases write decodes to the right instant")
    func timestampForms() throws {
        func instant(_ text: String) throws -> Double { try Date(sqlValue: .text(text), column: "t").timeIntervalSince1970 }
        #expect(try instant("1970-01-01 00:00:00+00") == 0)
        #expect(try instant("1970-01-01T05:30:00+05:30") == 0)
        #expect(try instant("1969-12-31 19:00:00-05") == 0)
        #expect(try instant("1970-01-01 00:00:00.5Z") == 0.5)
        #expect(try instant("2000-03-01 12:34:56.123456") == 951_914_096.123456)
        #expect(try instant("2000-03-01") == 951_868_800)  // a PostgreSQL date: midnight UTC
        #expect(try instant("0001-01-01 00:00:00+00") == -62_135_596_800)
        #expect(try instant("0001-12-31 00:00:00+00 BC") == -62_135_683_200)  // the day before
        #expect(try Date(sqlValue: .integer(86_400), column: "t").timeIntervalSince1970 == 86_400)
        for bad in ["", "2000-13-01", "2000-01-01 25:00", "2000-01-01 00:00:00.1234567", "yesterday", "infinity"] {
            #expect(throws: SQLError.self, "\(bad)") { try instant(bad) }
        }
        // Written with microseconds and an explicit offset, in the proleptic Gregorian calendar.
        #expect(Date(timeIntervalSince1970: -0.000_001).sqlValue == .text("1969-12-31 23:59:59.999999+00:00"))
    }

    static func withSamplesTable(_ backend: TestBackend, _ database: TestDatabase, _ body: @escaping (Connection) async throws -> Void) async throws {
        try await database.withPrivateConnection(backend) { connection in
            let metadata = Metadata(Samples.self)
            try await metadata.createAll(on: connection)
            try await body(connection)
            try await metadata.dropAll(on: connection)
        }
    }
}
