import FoundationEssentials
import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// One column of every scalar type, for random values.
enum FuzzValues: TableSchema {
    static let tableName = "fuzz_values"
    static let id = Column<Int64>("id", of: FuzzValues.self, .primaryKey)
    static let small = Column<Int16>("small", of: FuzzValues.self)
    static let medium = Column<Int32>("medium", of: FuzzValues.self)
    static let large = Column<Int64>("large", of: FuzzValues.self)
    static let single = Column<Float>("single", of: FuzzValues.self)
    static let double = Column<Double>("double", of: FuzzValues.self)
    static let flag = Column<Bool>("flag", of: FuzzValues.self)
    static let text = Column<String>("text", of: FuzzValues.self)
    static let bytes = Column<[UInt8]>("bytes", of: FuzzValues.self)
    static let moment = Column<Date>("moment", of: FuzzValues.self)
    static let uuid = Column<UUID>("uuid", of: FuzzValues.self)
    static let decimal = Column<Decimal>("decimal", of: FuzzValues.self)
    static let columns: [any AnyColumn] = [id, small, medium, large, single, double, flag, text, bytes, moment, uuid, decimal]
}

/// Random values of every supported type, extremes and invalid encodings included, on every backend ×
/// database: each one comes back exactly (a `Date` to the microsecond both databases store), or is refused
/// with a typed error naming its parameter, before anything is stored.
@Suite("Fuzzing: value round trips", .limit(minutes: 2))
struct FuzzValueTests {
    struct Values {
        var small: Int16, medium: Int32, large: Int64, single: Float, double: Double, flag: Bool
        var text: String, bytes: [UInt8], moment: Date, uuid: UUID, decimal: Decimal
    }

    static func integer<T: FixedWidthInteger>(_ random: inout some RandomNumberGenerator) -> T {
        random.chance(0.3) ? random.pick([T.min, T.max, 0, -1, 1, T.min + 1, T.max - 1]) : T.random(in: T.min...T.max, using: &random)
    }

    static func double(_ random: inout some RandomNumberGenerator) -> Double {
        if random.chance(0.5) { return Double(bitPattern: random.next()) }
        return random.pick([
            0, -0.0, .nan, .infinity, -.infinity, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, .leastNonzeroMagnitude,
            .leastNormalMagnitude, 0.1, 1e308, -1e-308, Double(Int64.max), 9_007_199_254_740_991, .ulpOfOne, .pi,
        ])
    }

    static func single(_ random: inout some RandomNumberGenerator) -> Float {
        if random.chance(0.5) { return Float(bitPattern: UInt32(truncatingIfNeeded: random.next())) }
        return random.pick([0, -0.0, .nan, .infinity, -.infinity, .greatestFiniteMagnitude, .leastNonzeroMagnitude, 0.1, 16_777_215])
    }

    static let scalarRanges: [ClosedRange<UInt32>] = [0x20...0x7E, 0x00...0x1F, 0xA0...0x2FF, 0x300...0x36F, 0x370...0xD7FF, 0xE000...0xFFFD, 0x1_0000...0x10_FFFF]

    static func text(_ random: inout some RandomNumberGenerator) -> String {
        var text = ""
        for _ in 0..<Int.random(in: 0...24, using: &random) {
            if random.chance(0.1) {
                text += random.pick(["\u{0}", "\u{FEFF}", "\u{FFFD}", "'", "\\", "''", "$$", "\u{10FFFF}", "e\u{301}", "👋🏽", "\r\n"])
                continue
            }
            let range = random.pick(scalarRanges)
            if let scalar = Unicode.Scalar(UInt32.random(in: range, using: &random)) { text.unicodeScalars.append(scalar) }
        }
        return text
    }

    static func moment(_ random: inout some RandomNumberGenerator) -> Date {
        switch Int.random(in: 0..<10, using: &random) {
        case 0: return Date(timeIntervalSince1970: random.pick([.nan, .infinity, -.infinity, 9.3e12, -9.3e12, 1e300]))
        case 1: return Date(timeIntervalSince1970: Double.random(in: -9.2e12...9.2e12, using: &random))
        case 2: return Date(timeIntervalSince1970: random.pick([0, -0.000_001, 0.000_000_4, -62_135_596_800, -62_135_596_800.000_001, 253_402_300_800]))
        default: return Date(timeIntervalSince1970: Double.random(in: -1e10...1e10, using: &random))
        }
    }

    static func decimal(_ random: inout some RandomNumberGenerator) -> Decimal {
        let significand = Decimal(UInt64.random(in: 0...(random.chance(0.5) ? 999 : UInt64.max), using: &random))
        let value = Decimal(sign: random.chance(0.5) ? .minus : .plus, exponent: Int.random(in: -40...40, using: &random), significand: significand)
        return random.chance(0.1) ? random.pick([0, Decimal(string: "99999999999999999999999999999999999999") ?? 0, Decimal(string: "-0.000000000000000000000000000000000000000001") ?? 0]) : value
    }

    /// A UUID from the seed (not `UUID()`), so that a seed replays a run exactly.
    static func uuid(_ random: inout some RandomNumberGenerator) -> UUID {
        let b = (0..<16).map { _ in UInt8.random(in: 0...255, using: &random) }
        return UUID(uuid: (b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]))
    }

    static func values(_ random: inout some RandomNumberGenerator) -> Values {
        Values(
            small: integer(&random), medium: integer(&random), large: integer(&random), single: single(&random), double: double(&random),
            flag: random.chance(0.5), text: text(&random), bytes: (0..<Int.random(in: 0...40, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) },
            moment: moment(&random), uuid: uuid(&random), decimal: decimal(&random))
    }

    /// The columns whose value this database may refuse (a typed error before sending), by parameter number
    /// (from 1, in the order of the assignments: the id is parameter 1).
    static func refusable(_ values: Values, on database: TestDatabase) -> Set<Int> {
        var columns: Set<Int> = []
        if database == .sqlite {
            // SQLite stores NaN as NULL and -0.0 as 0.0: refused rather than altered.
            if values.single.isNaN || (values.single == 0 && values.single.sign == .minus) { columns.insert(5) }
            if values.double.isNaN || (values.double == 0 && values.double.sign == .minus) { columns.insert(6) }
        }
        // PostgreSQL's text cannot hold NUL (SQLite's can).
        if database == .postgresql && values.text.utf8.contains(0) { columns.insert(8) }
        if values.moment.sqlValue.isUnrepresentable { columns.insert(10) }
        return columns
    }

    /// PostgreSQL's timestamps start in 4713 BC: an earlier Date is the server's typed out-of-range error.
    static func beforePostgresRange(_ date: Date) -> Bool { date.timeIntervalSince1970 < -210_866_803_200 }

    @Test("random values of every type come back exactly or are refused, typed, naming the parameter",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func roundTrips(_ backend: TestBackend, _ database: TestDatabase) async throws {
        var random = Fuzz.generator("values-\(backend)-\(database)")
        try await database.withPrivateConnection(backend) { connection in
            let metadata = Metadata(FuzzValues.self)
            try await metadata.createAll(on: connection)
            var stored = 0, refused = 0
            for id in 1...(150 * Fuzz.scale) {
                let values = Self.values(&random)
                let refusable = Self.refusable(values, on: database)
                let statement = insert(into: FuzzValues.self).values(
                    FuzzValues.id.set(Int64(id)), FuzzValues.small.set(values.small), FuzzValues.medium.set(values.medium),
                    FuzzValues.large.set(values.large), FuzzValues.single.set(values.single), FuzzValues.double.set(values.double),
                    FuzzValues.flag.set(values.flag), FuzzValues.text.set(values.text), FuzzValues.bytes.set(values.bytes),
                    FuzzValues.moment.set(values.moment), FuzzValues.uuid.set(values.uuid), FuzzValues.decimal.set(values.decimal))
                do {
                    try await connection.execute(statement)
                } catch let error as SQLError where !refusable.isEmpty {
                    let named = refusable.contains { number in
                        ["parameter \(number) ", "parameter \(number):", "parameter $\(number) ", "parameter $\(number):"].contains { error.message.contains($0) }
                    }
                    #expect((error.kind == .invalidParameter || error.kind == .misuse) && named, "\(error) for \(values) (\(Fuzz.replay))")
                    #expect(try await connection.execute(select(count()).from(FuzzValues.self).where(FuzzValues.id == Int64(id))).scalar(Int.self) == 0)
                    refused += 1
                    continue
                } catch let error as SQLError where database == .postgresql && Self.beforePostgresRange(values.moment) {
                    #expect(error.kind == .database && error.message.contains("out of range"), "\(error) (\(Fuzz.replay))")
                    refused += 1
                    continue
                }
                #expect(refusable.isEmpty, "\(values) was stored on \(database) (\(Fuzz.replay))")
                #expect(!(database == .postgresql && Self.beforePostgresRange(values.moment)), "\(values.moment) stored on PostgreSQL")
                stored += 1
                let row = try await connection.execute(select(all: FuzzValues.self).where(FuzzValues.id == Int64(id))).one()
                let context = "\(values) on \(database) (\(Fuzz.replay))"
                #expect(try row.decode("small", as: Int16.self) == values.small, "\(context)")
                #expect(try row.decode("medium", as: Int32.self) == values.medium, "\(context)")
                #expect(try row.decode("large", as: Int64.self) == values.large, "\(context)")
                let single = try row.decode("single", as: Float.self)
                #expect(single.bitPattern == values.single.bitPattern || (single.isNaN && values.single.isNaN), "single \(single): \(context)")
                let double = try row.decode("double", as: Double.self)
                #expect(double.bitPattern == values.double.bitPattern || (double.isNaN && values.double.isNaN), "double \(double): \(context)")
                #expect(try row.decode("flag", as: Bool.self) == values.flag, "\(context)")
                let text = try row.decode("text", as: String.self)
                #expect(Array(text.utf8) == Array(values.text.utf8), "text \(text.debugDescription): \(context)")
                #expect(try row.decode("bytes", as: [UInt8].self) == values.bytes, "\(context)")
                // Both databases keep microseconds: the instant stored is the microsecond nearest to the Date
                // (half a microsecond away at most), and the Date read back the one nearest to it (half a ulp).
                // (Compared as the Double a Date holds: seconds since 2001.)
                let moment = try row.decode("moment", as: Date.self).timeIntervalSinceReferenceDate
                let sent = values.moment.timeIntervalSinceReferenceDate
                let tolerance = (0.000_000_5 + sent.ulp / 2) * 1.000_001
                #expect(abs(moment - sent) <= tolerance, "moment \(moment) for \(sent): \(context)")
                #expect(try row.decode("uuid", as: UUID.self) == values.uuid, "\(context)")
                #expect(try row.decode("decimal", as: Decimal.self) == values.decimal, "decimal: \(context)")
            }
            #expect(stored > 0 && refused > 0, "stored \(stored), refused \(refused)")
        }
    }

    @Test("random bytes read as text: valid UTF-8 is that String, anything else a typed error naming the column, the bytes intact",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func encodings(_ backend: TestBackend, _ database: TestDatabase) async throws {
        var random = Fuzz.generator("encodings-\(backend)-\(database)")
        try await database.withPrivateConnection(backend) { connection in
            for _ in 0..<(200 * Fuzz.scale) {
                var bytes = (0..<Int.random(in: 0...12, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                if random.chance(0.3) { bytes = Array(Self.text(&random).utf8) }  // often valid, sometimes not
                let valid = String(validating: bytes, as: UTF8.self)
                if database == .postgresql {
                    // The server checks every text it makes against the database encoding (UTF-8) itself.
                    do {
                        let text = try await connection.execute("SELECT convert_from(\(bytes), 'UTF8') AS raw").scalar(String.self)
                        #expect(valid != nil && !bytes.contains(0) && text.map { Array($0.utf8) } == bytes, "\(bytes) (\(Fuzz.replay))")
                    } catch let error as SQLError {
                        #expect(valid == nil || bytes.contains(0), "\(error) for \(bytes) (\(Fuzz.replay))")
                    }
                    continue
                }
                let row = try await connection.execute("SELECT CAST(\(bytes) AS TEXT) AS raw").one()
                if let valid {
                    #expect(try row.decode("raw", as: String.self) == valid, "\(bytes) (\(Fuzz.replay))")
                } else {
                    #expect { try row.decode("raw", as: String.self) } throws: {
                        ($0 as? SQLError)?.kind == .decoding && "\($0)".contains("raw")
                    }
                    #expect(try row.decode("raw", as: [UInt8].self) == bytes, "\(bytes) (\(Fuzz.replay))")
                }
            }
        }
    }
}
