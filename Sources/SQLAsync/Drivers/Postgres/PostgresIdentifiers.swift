/// PostgreSQL truncates an identifier longer than 63 bytes to its first 63 (with only a NOTICE, while the
/// statement is parsed), so two long table names that share a prefix become one table. The driver refuses such
/// a statement before anything is sent: this scans SQL text the way the server's lexer splits it — string
/// literals (`'…'`, `E'…'` with backslash escapes), dollar quotes, quoted identifiers, comments — and finds
/// the first identifier over the limit.
enum PostgresIdentifiers {
    /// The most bytes PostgreSQL keeps of an identifier (`NAMEDATALEN` - 1).
    static let maximumLength = 63

    /// The first identifier in `sql` longer than ``maximumLength`` bytes, as written (quotes removed), or nil.
    /// `backslashEscapes`: plain string literals take backslash escapes (the server's
    /// `standard_conforming_strings` is off).
    static func firstTooLong(in sql: String, backslashEscapes: Bool = false) -> String? {
        // Read in place (no copy): it runs before every stream, batch and script.
        var sql = sql
        return sql.withUTF8 { firstTooLong(in: $0, backslashEscapes: backslashEscapes) }
    }

    private static func firstTooLong(in bytes: UnsafeBufferPointer<UInt8>, backslashEscapes: Bool) -> String? {
        var index = 0
        // Where a word that is just `E` (or `e`) ended: a quote right there opens an escape string.
        var escapePrefixEnd = -1
        let count = bytes.count
        func at(_ offset: Int) -> UInt8? { index + offset < count ? bytes[index + offset] : nil }
        func isIdentifierStart(_ byte: UInt8) -> Bool {
            (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || byte == 0x5F || byte >= 0x80
        }
        func isIdentifierByte(_ byte: UInt8) -> Bool { isIdentifierStart(byte) || (byte >= 0x30 && byte <= 0x39) || byte == 0x24 }
        while index < count {
            let byte = bytes[index]
            switch byte {
            case UInt8(ascii: "'"):
                // A string literal; E'…' (the E was read as a one-letter word just before) escapes with
                // backslashes, as every literal does with standard_conforming_strings off; '' is a quote in all.
                let escapes = backslashEscapes || escapePrefixEnd == index
                index += 1
                while index < count {
                    if escapes, bytes[index] == UInt8(ascii: "\\") {
                        index += 2
                        continue
                    }
                    if bytes[index] == UInt8(ascii: "'") {
                        if at(1) == UInt8(ascii: "'") {
                            index += 2
                            continue
                        }
                        break
                    }
                    index += 1
                }
                index += 1
            case UInt8(ascii: "\""):
                var name: [UInt8] = []
                index += 1
                while index < count {
                    if bytes[index] == UInt8(ascii: "\"") {
                        if at(1) == UInt8(ascii: "\"") {
                            name.append(UInt8(ascii: "\""))
                            index += 2
                            continue
                        }
                        break
                    }
                    name.append(bytes[index])
                    index += 1
                }
                index += 1
                if name.count > maximumLength { return String(decoding: name, as: UTF8.self) }
            case UInt8(ascii: "-") where at(1) == UInt8(ascii: "-"):
                while index < count, bytes[index] != UInt8(ascii: "\n") { index += 1 }
            case UInt8(ascii: "/") where at(1) == UInt8(ascii: "*"):
                // Block comments nest in PostgreSQL.
                var depth = 0
                while index < count {
                    if bytes[index] == UInt8(ascii: "/"), at(1) == UInt8(ascii: "*") {
                        depth += 1
                        index += 2
                    } else if bytes[index] == UInt8(ascii: "*"), at(1) == UInt8(ascii: "/") {
                        depth -= 1
                        index += 2
                        if depth == 0 { break }
                    } else {
                        index += 1
                    }
                }
            case UInt8(ascii: "$") where index == 0 || !isIdentifierByte(bytes[index - 1]):
                // $n is a parameter; $tag$ … $tag$ (tag possibly empty) is a dollar-quoted string.
                var end = index + 1
                while end < count, isIdentifierStart(bytes[end]) || (end > index + 1 && isIdentifierByte(bytes[end]) && bytes[end] != UInt8(ascii: "$")) {
                    end += 1
                }
                guard end < count, bytes[end] == UInt8(ascii: "$") else {
                    index += 1
                    continue
                }
                let tag = Array(bytes[index...end])
                index = end + 1
                while index < count {
                    if bytes[index] == UInt8(ascii: "$"), index + tag.count <= count, bytes[index..<(index + tag.count)].elementsEqual(tag) {
                        index += tag.count
                        break
                    }
                    index += 1
                }
            default:
                if isIdentifierStart(byte) {
                    let start = index
                    while index < count, isIdentifierByte(bytes[index]) { index += 1 }
                    if index - start == 1, bytes[start] | 0x20 == UInt8(ascii: "e") { escapePrefixEnd = index }
                    // E'…', U&'…', B'…', X'…': a prefix, not an identifier; the quote is read next.
                    if index - start > maximumLength { return String(decoding: bytes[start..<index], as: UTF8.self) }
                } else {
                    index += 1
                }
            }
        }
        return nil
    }

    /// Throws when `sql` holds an identifier PostgreSQL would truncate.
    static func check(_ sql: String, backslashEscapes: Bool) throws(SQLError) {
        guard let name = firstTooLong(in: sql, backslashEscapes: backslashEscapes) else { return }
        throw SQLError(
            .invalidParameter,
            "the identifier '\(name.prefix(70))…' is \(name.utf8.count) bytes long; PostgreSQL keeps only \(maximumLength) "
                + "and would silently truncate it (two long names could become one): shorten it", sql: sql)
    }
}
