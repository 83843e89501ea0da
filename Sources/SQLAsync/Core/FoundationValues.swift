public import FoundationEssentials

// Date, UUID, Decimal and JSON as column values. FoundationEssentials holds the value types only: no run loop,
// no Dispatch, nothing that waits.

// MARK: - Date

/// Timestamps travel as ISO 8601 text with microseconds and an explicit UTC offset
/// (`2026-11-25 09:16:45.123456+00:00`), which PostgreSQL reads as `timestamptz` and SQLite stores as text
/// that sorts in time order. Precision is PostgreSQL's: a microsecond (the value is rounded to it).
extension Date: SQLColumnValue {
    public typealias NonOptional = Date
    public static var columnType: ColumnType { .timestamp }

    /// Refused with ``SQLError/Kind/invalidParameter`` before anything is sent when no timestamp can hold it
    /// exactly: NaN, infinite, or beyond about ±292,000 years (microseconds since 1970 in 64 bits).
    public var sqlValue: SQLValue {
        guard let microseconds = Timestamp.microseconds(self) else {
            return .unstorableDate(secondsSince1970: timeIntervalSince1970)
        }
        return .text(Timestamp.format(microseconds: microseconds))
    }

    /// Decodes PostgreSQL `timestamptz`, `timestamp` (read as UTC) and `date` text, SQLite text in ISO 8601
    /// (`CURRENT_TIMESTAMP`'s form included, read as UTC), and SQLite integers as Unix seconds.
    ///
    /// - Throws: ``SQLError/Kind/decoding`` for `infinity` / `-infinity` (no `Date` stands for them) and for
    ///   text that is not a timestamp.
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .text(let text):
            if text == "infinity" || text == "-infinity" {
                throw SQLError(.decoding, "column '\(column)' holds the timestamp \(text), which no Date represents")
            }
            let microseconds: Int64
            switch Timestamp.parse(text) {
            case .instant(let parsed): microseconds = parsed
            case .outOfRange:
                throw SQLError(
                    .decoding,
                    "column '\(column)' holds the timestamp \(text), out of the range a Date holds exactly (about ±292,000 "
                        + "years around 1970; PostgreSQL's reach to year 294,276)")
            case .malformed:
                throw SQLError(.decoding, "column '\(column)' holds text that is not a timestamp")
            }
            self = Timestamp.date(microseconds: microseconds)
        case .integer(let seconds):
            self = Date(timeIntervalSince1970: Double(seconds))
        default:
            throw .decoding(column, value, as: Date.self)
        }
    }
}

/// Timestamp text, written and read without a calendar object (proleptic Gregorian, UTC).
enum Timestamp {
    /// Microseconds since 1970, rounded; nil for NaN, infinities and dates beyond 64 bits of them (about
    /// ±292,000 years), which no timestamp holds (never clamped: that would store another date).
    /// Seconds from 1970 to 2001, the reference date a `Date` counts from.
    static let referenceDate: Int64 = 978_307_200

    /// The microsecond since 1970 nearest to `date`, or nil beyond 64 bits of them.
    ///
    /// Exact: it reads the Double the `Date` holds (seconds since 2001; `timeIntervalSince1970` would round
    /// once more), and scales whole seconds and the fraction apart (`t * 1_000_000` rounds beyond 2^53 µs,
    /// some 285 years away, which could store an instant a microsecond off the nearest).
    static func microseconds(_ date: Date) -> Int64? {
        let seconds = date.timeIntervalSinceReferenceDate
        guard seconds.isFinite else { return nil }
        let whole = seconds.rounded(.down)
        // Exact when |seconds| >= 1 (the two are within a factor of two: Sterbenz); off by 1e-16 s at most below.
        let fraction = seconds - whole
        guard let wholeSeconds = Int64(exactly: whole) else { return nil }
        let (since1970, shifted) = wholeSeconds.addingReportingOverflow(referenceDate)
        let micros = Int64((fraction * 1_000_000).rounded())  // 0...1_000_000
        guard !shifted else { return nil }
        // Below zero, from the second above: `since1970 * 1_000_000` alone can pass Int64.min when the sum
        // does not (within the last second of the range).
        let (base, step) = since1970 < 0 ? (since1970 + 1, micros - 1_000_000) : (since1970, micros)
        let (scaled, overflow) = base.multipliedReportingOverflow(by: 1_000_000)
        let (total, carry) = scaled.addingReportingOverflow(step)
        return overflow || carry ? nil : total
    }

    /// The Date nearest to `microseconds` since 1970: whole seconds since 2001 are exact in a Double, so only
    /// the sum rounds (`Double(microseconds)` alone rounds beyond 2^53 µs, the division again, and going
    /// through `timeIntervalSince1970` once more).
    static func date(microseconds: Int64) -> Date {
        let (wholeSeconds, micros) = floorDivide(microseconds, 1_000_000)
        return Date(timeIntervalSinceReferenceDate: Double(wholeSeconds - referenceDate) + Double(micros) / 1_000_000)
    }

    static func format(microseconds: Int64) -> String {
        let (days, dayMicros) = floorDivide(microseconds, 86_400_000_000)
        let (year, month, day) = civil(fromDays: days)
        let seconds = dayMicros / 1_000_000
        let fraction = dayMicros % 1_000_000
        // Years before 1 are written as PostgreSQL writes them: 1 BC is year 0, and the era follows.
        let era = year <= 0 ? " BC" : ""
        return "\(pad(year <= 0 ? 1 - year : year, 4))-\(pad(month, 2))-\(pad(day, 2)) \(pad(seconds / 3600, 2)):"
            + "\(pad(seconds / 60 % 60, 2)):\(pad(seconds % 60, 2)).\(pad(fraction, 6))+00:00" + era
    }

    /// What ``parse(_:)`` makes of a text.
    enum Parsed: Equatable {
        case instant(microseconds: Int64)
        /// Well formed, but beyond 64 bits of microseconds since 1970 (about ±292,000 years).
        case outOfRange
        case malformed
    }

    /// Parses `YYYY-MM-DD[( |T)HH:MM[:SS[.f…]]][Z|±HH[:MM[:SS]]][ BC]` into microseconds since 1970 (UTC).
    static func parse(_ text: String) -> Parsed {
        var scanner = Scanner(Array(text.utf8))
        guard let year = scanner.number(minDigits: 4), scanner.take(UInt8(ascii: "-")),
            let month = scanner.number(digits: 2), (1...12).contains(month), scanner.take(UInt8(ascii: "-")),
            let day = scanner.number(digits: 2), (1...31).contains(day)
        else { return .malformed }
        var micros: Int64 = 0
        if scanner.take(UInt8(ascii: " ")) || scanner.take(UInt8(ascii: "T")) {
            guard let hour = scanner.number(digits: 2), hour < 24, scanner.take(UInt8(ascii: ":")),
                let minute = scanner.number(digits: 2), minute < 60
            else { return .malformed }
            var second: Int64 = 0
            var fraction: Int64 = 0
            if scanner.take(UInt8(ascii: ":")) {
                guard let parsed = scanner.number(digits: 2), parsed < 61 else { return .malformed }
                second = parsed
                if scanner.take(UInt8(ascii: ".")) {
                    var digits = 0
                    while let digit = scanner.digit() {
                        // Beyond microseconds: PostgreSQL never sends them; refuse rather than round silently.
                        guard digits < 6 else { return .malformed }
                        fraction = fraction * 10 + digit
                        digits += 1
                    }
                    guard digits > 0 else { return .malformed }
                    for _ in digits..<6 { fraction *= 10 }
                }
            }
            micros = ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction
            if scanner.take(UInt8(ascii: "Z")) {
                // UTC
            } else if let sign = scanner.peek(), sign == UInt8(ascii: "+") || sign == UInt8(ascii: "-") {
                scanner.advance()
                guard let offsetHours = scanner.number(digits: 2) else { return .malformed }
                var offset = offsetHours * 3600
                if scanner.take(UInt8(ascii: ":")) {
                    guard let offsetMinutes = scanner.number(digits: 2) else { return .malformed }
                    offset += offsetMinutes * 60
                    if scanner.take(UInt8(ascii: ":")) {
                        guard let offsetSeconds = scanner.number(digits: 2) else { return .malformed }
                        offset += offsetSeconds
                    }
                }
                micros -= (sign == UInt8(ascii: "+") ? offset : -offset) * 1_000_000
            }
        }
        var civilYear = year
        if scanner.take(Array(" BC".utf8)) { civilYear = 1 - year }  // 1 BC is year 0
        guard scanner.atEnd else { return .malformed }
        let days = days(fromCivil: civilYear, month, day)
        let (dayMicros, overflow) = days.multipliedReportingOverflow(by: 86_400_000_000)
        let (total, sumOverflow) = dayMicros.addingReportingOverflow(micros)
        guard !overflow, !sumOverflow else { return .outOfRange }
        return .instant(microseconds: total)
    }

    // Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
    static func days(fromCivil year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let doy = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    static func civil(fromDays days: Int64) -> (Int64, Int64, Int64) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        return (yoe + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }

    private static func floorDivide(_ value: Int64, _ divisor: Int64) -> (Int64, Int64) {
        let quotient = value / divisor
        let remainder = value % divisor
        return remainder < 0 ? (quotient - 1, remainder + divisor) : (quotient, remainder)
    }

    private static func pad(_ value: Int64, _ width: Int) -> String {
        let digits = String(value)
        return digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }

    struct Scanner {
        let bytes: [UInt8]
        var index = 0
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        var atEnd: Bool { index == bytes.count }
        func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }
        mutating func advance() { index += 1 }
        mutating func take(_ byte: UInt8) -> Bool {
            guard peek() == byte else { return false }
            index += 1
            return true
        }
        mutating func take(_ sequence: [UInt8]) -> Bool {
            guard bytes.count - index >= sequence.count, Array(bytes[index..<index + sequence.count]) == sequence else { return false }
            index += sequence.count
            return true
        }
        mutating func digit() -> Int64? {
            guard let byte = peek(), (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            index += 1
            return Int64(byte - UInt8(ascii: "0"))
        }
        mutating func number(digits count: Int) -> Int64? {
            var value: Int64 = 0
            for _ in 0..<count {
                guard let digit = digit() else { return nil }
                value = value * 10 + digit
            }
            return value
        }
        mutating func number(minDigits: Int) -> Int64? {
            var value: Int64 = 0
            var count = 0
            while count < 9, let digit = digit() {
                value = value * 10 + digit
                count += 1
            }
            return count >= minDigits ? value : nil
        }
    }
}

// MARK: - UUID

/// UUIDs travel as lower-case text: PostgreSQL reads it as `uuid`, SQLite stores it as text.
extension UUID: SQLColumnValue {
    public typealias NonOptional = UUID
    public static var columnType: ColumnType { .uuid }

    public var sqlValue: SQLValue { .text(uuidString.lowercased()) }

    /// Decodes text (any case, with hyphens) or 16 bytes.
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .text(let text):
            guard let uuid = UUID(uuidString: text) else {
                throw SQLError(.decoding, "column '\(column)' holds text that is not a UUID")
            }
            self = uuid
        case .bytes(let bytes) where bytes.count == 16:
            self = UUID(uuid: (
                bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
        default:
            throw .decoding(column, value, as: UUID.self)
        }
    }
}

// MARK: - Decimal

/// Decimals travel as their exact text: PostgreSQL reads it as `numeric`, SQLite stores it as text (a
/// NUMERIC column would round it to a double).
extension Decimal: SQLColumnValue {
    public typealias NonOptional = Decimal
    public static var columnType: ColumnType { .decimal }

    public var sqlValue: SQLValue { isNaN ? .text("NaN") : .text(description) }

    /// Decodes numeric text exactly, and integers.
    ///
    /// - Throws: ``SQLError/Kind/decoding`` for a number with more significant digits than `Decimal` holds
    ///   (38), for `Infinity`, and for text that is not a number — never a rounded value.
    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        switch value {
        case .integer(let integer):
            self = Decimal(integer)
        case .text("NaN"):
            self = .nan
        case .text(let text):
            guard let decimal = Decimal(string: text), !decimal.isNaN else {
                throw SQLError(.decoding, "column '\(column)' holds text that is not a number a Decimal can represent")
            }
            guard Self.canonical(decimal.description) == Self.canonical(text) else {
                throw SQLError(
                    .decoding,
                    "column '\(column)' holds a number with more precision than a Decimal holds (38 digits); read it as String")
            }
            self = decimal
        default:
            throw .decoding(column, value, as: Decimal.self)
        }
    }

    /// The number's digits without a plus sign, leading zeros, trailing fractional zeros or a negative zero.
    static func canonical(_ text: String) -> String {
        var body = Substring(text)
        var negative = false
        if body.first == "-" { negative = true; body = body.dropFirst() } else if body.first == "+" { body = body.dropFirst() }
        var integer = body.prefix { $0 != "." }
        var fraction = body.dropFirst(integer.count + (body.contains(".") ? 1 : 0))
        while integer.count > 1, integer.first == "0" { integer = integer.dropFirst() }
        while fraction.last == "0" { fraction = fraction.dropLast() }
        if integer.isEmpty { integer = "0" }
        let digits = fraction.isEmpty ? String(integer) : "\(integer).\(fraction)"
        return negative && digits != "0" ? "-" + digits : digits
    }
}

// MARK: - JSON

/// A `Codable` value stored as JSON: PostgreSQL `jsonb`, SQLite text.
///
/// ```swift
/// struct Settings: Codable, Sendable { var theme: String }
/// static let settings = Column<JSON<Settings>>("settings", of: Users.self)
/// try await connection.execute(insert(into: Users.self).values(Users.settings.set(try JSON(Settings(theme: "dark")))))
/// ```
public struct JSON<Value: Codable & Sendable>: SQLColumnValue {
    public typealias NonOptional = JSON
    public static var columnType: ColumnType { .json }

    /// The value.
    public let value: Value
    /// Its JSON text (keys sorted), as stored.
    public let text: String

    /// Encodes `value`.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the value does not encode (a non-finite float, say).
    public init(_ value: Value) throws(SQLError) {
        self.value = value
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            text = String(decoding: try encoder.encode(value), as: UTF8.self)
        } catch {
            throw SQLError(.misuse, "a \(Value.self) value does not encode as JSON: \(error)")
        }
    }

    public var sqlValue: SQLValue { .text(text) }

    public init(sqlValue value: SQLValue, column: String) throws(SQLError) {
        let data: Data
        switch value {
        case .text(let text): data = Data(text.utf8)
        case .bytes(let bytes): data = Data(bytes)
        default: throw .decoding(column, value, as: JSON.self)
        }
        do {
            self.value = try JSONDecoder().decode(Value.self, from: data)
            text = String(decoding: data, as: UTF8.self)
        } catch {
            throw SQLError(.decoding, "column '\(column)' holds JSON that does not decode to \(Value.self): \(error)")
        }
    }
}

extension JSON: Equatable where Value: Equatable {
    public static func == (lhs: JSON, rhs: JSON) -> Bool { lhs.value == rhs.value }
}
