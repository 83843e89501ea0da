import CLibPQ

/// Where a database is, parsed from a URL.
///
/// - `postgresql://user:password@host:5432/database?sslmode=require&application_name=app` (also
///   `postgres://`), read by libpq itself (`PQconninfoParse`): several hosts
///   (`postgresql://db1:5432,db2:5433/app?target_session_attrs=read-write`), a percent-encoded socket
///   directory as the host (`postgresql://%2Fvar%2Frun%2Fpostgresql/app`), a bracketed IPv6 address, and
///   every connection keyword the linked libpq knows, as query parameters.
/// - `sqlite:///relative/path.db` (three slashes: relative to the working directory),
///   `sqlite:////absolute/path.db` (four slashes), `sqlite::memory:` (a private in-memory database).
///
/// The password is never part of ``description``, of an error, or of a log line.
public struct DatabaseURL: Sendable, Hashable, CustomStringConvertible {
    /// Which database a URL names.
    public enum Database: Sendable, Hashable {
        /// A PostgreSQL server.
        case postgresql
        /// An SQLite database file or an in-memory database.
        case sqlite
    }

    /// Which database this URL names.
    public let database: Database

    /// PostgreSQL: the (first) host name, address or socket directory (`nil`: libpq's default, a local socket).
    public let host: String?
    /// PostgreSQL: the (first) port.
    public let port: Int?
    /// PostgreSQL: every host, in the order libpq tries them.
    public let hosts: [String]
    /// PostgreSQL: the port of each host (one port for all, or one per host), as the URL gives them.
    public let ports: [Int]
    /// PostgreSQL: libpq's own reading of the URL (`PQconninfoParse`), every keyword with a value, password
    /// included: what the connection is made with. Kept out of `description`.
    let options: [(key: String, value: String)]
    /// PostgreSQL: the user name.
    public let user: String?
    /// PostgreSQL: the database name.
    public let databaseName: String?
    /// The query parameters, in URL order: for PostgreSQL, libpq connection keywords passed through; for
    /// SQLite, `mode` (`ro`, `rw` or `rwc`).
    public let parameters: [(key: String, value: String)]
    /// SQLite: the file path, or `nil` for an in-memory database.
    public let sqlitePath: String?

    /// Kept out of `description` and of `Hashable`'s view: see ``hasPassword``.
    let password: String?

    /// Whether the URL carries a password.
    public var hasPassword: Bool { password != nil }

    /// Parses `string`.
    ///
    /// - Throws: ``SQLError`` of kind ``SQLError/Kind/invalidURL`` naming the problem (never the password).
    public init(_ string: String) throws(SQLError) {
        if string == "sqlite::memory:" || string == "sqlite://" {
            self.init(sqlitePath: nil)
            return
        }
        if string.hasPrefix("sqlite:") {
            guard string.hasPrefix("sqlite:///") else {
                throw SQLError(.invalidURL, "an SQLite URL is sqlite:///relative.db, sqlite:////absolute.db or sqlite::memory:")
            }
            // A '?' starts the parameters (a '?' in a file name is written %3F), as in SQLite's own URIs.
            let rest = string.dropFirst("sqlite:///".count)
            let path = rest.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
            guard !path.isEmpty else { throw SQLError(.invalidURL, "the SQLite URL names no file") }
            let query = rest.dropFirst(path.count + 1)
            var parameters: [(key: String, value: String)] = []
            for pair in query.split(separator: "&") where !pair.isEmpty {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let key = try Self.percentDecode(parts[0], what: "parameter name")
                let value = parts.count > 1 ? try Self.percentDecode(parts[1], what: "value of a parameter") : ""
                guard key == "mode" else {
                    throw SQLError(.invalidURL, "the SQLite URL parameter '\(key)' is not supported (mode=ro|rw|rwc is)")
                }
                guard ["ro", "rw", "rwc"].contains(value) else {
                    throw SQLError(.invalidURL, "the SQLite URL's mode is ro, rw or rwc, not '\(value)'")
                }
                parameters.append((key, value))
            }
            let file = try Self.percentDecode(path, what: "SQLite path")
            // SQLite's own name for a private in-memory database, with parameters: not a file of that name
            // (one empty database per pooled connection). A mode other than the default means nothing there.
            if file == ":memory:" {
                guard parameters.allSatisfy({ $0.value == "rwc" }) else {
                    throw SQLError(.invalidURL, "an in-memory SQLite database is always read-write: mode=ro and mode=rw are for files")
                }
                self.init(sqlitePath: nil)
                return
            }
            self.init(sqlitePath: file, parameters: parameters)
            return
        }
        let rest: Substring
        if string.hasPrefix("postgresql://") {
            rest = string.dropFirst("postgresql://".count)
        } else if string.hasPrefix("postgres://") {
            rest = string.dropFirst("postgres://".count)
        } else {
            // The scheme is named only when it is one (letters first, then letters, digits, '+', '-', '.',
            // followed by "://"): otherwise what comes before the first ':' may be a user name and password
            // written without any scheme, or the password itself.
            let scheme = string.prefix { $0 != ":" }
            let isScheme = string.dropFirst(scheme.count).hasPrefix("://") && scheme.count <= 32
                && scheme.first.map { $0.isASCII && $0.isLetter } == true
                && scheme.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+-.".contains($0)) }
            throw SQLError(
                .invalidURL,
                isScheme
                    ? "unsupported database URL scheme '\(scheme)'; use postgresql:// or sqlite://"
                    : "the URL does not start with a scheme; use postgresql:// or sqlite://")
        }
        try self.init(postgres: string, rest: rest)
    }

    private init(sqlitePath: String?, parameters: [(key: String, value: String)] = []) {
        database = .sqlite
        self.sqlitePath = sqlitePath
        host = nil
        port = nil
        hosts = []
        ports = []
        options = []
        rawAuthority = ""
        rawPath = ""
        user = nil
        password = nil
        databaseName = nil
        self.parameters = parameters
    }

    /// SQLite: how the file is opened, from the URL's `mode` (SQLite's URI names): `ro` read-only, `rw`
    /// read-write without creating it, `rwc` (the default) read-write, created when missing.
    var sqliteMode: String { parameters.last { $0.key == "mode" }?.value ?? "rwc" }

    /// The URL's host list and path as written (no user-info part), for ``description``.
    private let rawAuthority: String
    private let rawPath: String

    private init(postgres string: String, rest: Substring) throws(SQLError) {
        database = .postgresql
        sqlitePath = nil
        // First, checks of its own, whose errors never quote the URL: a password with a reserved character
        // left unencoded could otherwise be read by libpq as part of the host or database name, and shown.
        // libpq ends the user-info part at the first '@' before the first '/', and reads a '?' before it as
        // part of the user name or password; this reading would take the '?' for the start of the
        // parameters. Refused, without quoting: what lies on either side may be the password.
        let authority = rest.prefix { $0 != "/" }
        if let at = authority.firstIndex(of: "@"), authority[..<at].contains("?") {
            throw SQLError(.invalidURL, "the user name or password in the URL contains an unencoded '?' (%-encode it as %3F)")
        }
        var remainder = rest
        var query: Substring = ""
        if let mark = remainder.firstIndex(of: "?") {
            query = remainder[remainder.index(after: mark)...]
            remainder = remainder[..<mark]
        }
        var path: Substring = ""
        if let slash = remainder.firstIndex(of: "/") {
            path = remainder[remainder.index(after: slash)...]
            remainder = remainder[..<slash]
        }
        // userinfo@hostport — the last '@' separates them (a password may contain an encoded '@' only).
        var hostPort = remainder
        var rawPassword: Substring?
        if let at = remainder.lastIndex(of: "@") {
            let userInfo = remainder[..<at]
            hostPort = remainder[remainder.index(after: at)...]
            // libpq ends the user-info part at the *first* '@': with another one left unencoded, libpq would
            // read the rest of the password as the host name, look it up and show it.
            guard !userInfo.contains("@") else {
                throw SQLError(.invalidURL, "the user name or password in the URL contains an unencoded '@' (%-encode it as %40)")
            }
            if let colon = userInfo.firstIndex(of: ":") {
                rawPassword = userInfo[userInfo.index(after: colon)...]
                _ = try Self.percentDecode(userInfo[..<colon], what: "user name")
            } else {
                _ = try Self.percentDecode(userInfo, what: "user name")
            }
        }
        let password = try rawPassword.map { rawPassword throws(SQLError) in try Self.percentDecode(rawPassword, what: "password") }
        for entry in hostPort.split(separator: ",", omittingEmptySubsequences: false) {
            if entry.hasPrefix("[") {
                guard let close = entry.firstIndex(of: "]") else {
                    throw SQLError(.invalidURL, "an IPv6 host in the URL lacks its closing ']'")
                }
                let after = entry[entry.index(after: close)...]
                if after.hasPrefix(":") { _ = try Self.parsePort(after.dropFirst()) } else if !after.isEmpty {
                    throw SQLError(.invalidURL, "unexpected text after the IPv6 host in the URL")
                }
            } else if let colon = entry.lastIndex(of: ":") {
                _ = try Self.parsePort(entry[entry.index(after: colon)...])
            }
            _ = try Self.percentDecode(entry, what: "host")
        }
        // A '@' after the '?' may mean a password cut short by an unencoded '/' or '?' (the authority then
        // ended early, and the password's tail became parameters): nothing of the parameters is quoted then.
        let mayQuote = !query.contains("@")
        var parameters: [(key: String, value: String)] = []
        for pair in query.split(separator: "&") where !pair.isEmpty {
            guard let equals = pair.firstIndex(of: "=") else {
                // Not echoed: with a '?' or '&' left unencoded in the password, this could be part of it.
                throw SQLError(.invalidURL, "a URL parameter has no '=' and value (is a '?' or '&' in the password not %-encoded?)")
            }
            let key = try Self.percentDecode(pair[..<equals], what: "parameter name")
            let value = try Self.percentDecode(pair[pair.index(after: equals)...], what: "value of a parameter")
            guard Self.isLibpqKeyword(key) else {
                // Named only when it looks like a keyword: otherwise it may be a piece of a password.
                let name = mayQuote && key.allSatisfy { $0.isASCII && ($0.isLetter || $0 == "_") } && key.count <= 40 ? "'\(key)' " : ""
                throw SQLError(.invalidURL, "the URL parameter \(name)is not a connection keyword of this libpq")
            }
            guard key != "password" else {
                throw SQLError(.invalidURL, "put the password in the URL's user-info part, not in a parameter")
            }
            if key == "client_encoding", !Self.isUTF8(value) {
                // The driver decodes every text value as UTF-8: another encoding would alter text silently.
                throw SQLError(
                    .invalidURL,
                    "client_encoding must be UTF8 (the driver reads and writes all text as UTF-8)\(mayQuote ? ", not '\(value)'" : "")")
            }
            parameters.append((key, value))
        }
        // A '@' after the first '/' means a password with a '/' left unencoded: refused, or a piece of it would
        // become the database name and show in the description.
        guard !path.contains("@") else {
            throw SQLError(.invalidURL, "the database name in the URL contains '@' (is a '/' in the password not %-encoded?)")
        }
        _ = try Self.percentDecode(path, what: "database name")

        // Then libpq's own reading, which is what the connection is made with.
        let options = try Self.libpqOptions(string, password: password, rawPassword: rawPassword.map(String.init))
        func option(_ key: String) -> String? { options.last { $0.key == key }?.value }
        let hosts = option("host").map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) } ?? []
        var ports: [Int] = []
        for text in option("port").map({ $0.split(separator: ",", omittingEmptySubsequences: false) }) ?? [] {
            ports.append(try Self.parsePort(text))
        }
        guard ports.count <= 1 || ports.count == max(hosts.count, 1) else {
            throw SQLError(.invalidURL, "the URL gives \(ports.count) ports for \(hosts.count) hosts (one port for all, or one per host)")
        }
        // Our reading and libpq's must agree on the credentials, or libpq would take part of them for
        // something else (the checks above are meant to make this unreachable).
        // (libpq keeps no empty password: `user:@host` has none, for it and for us.)
        guard (option("password") ?? "") == (password ?? "") else {
            throw SQLError(.invalidURL, "libpq reads the URL's user-info part differently (%-encode the password's reserved characters)")
        }
        self.options = options
        self.hosts = hosts
        self.ports = ports
        self.host = hosts.first.flatMap { $0.isEmpty ? nil : $0 }
        self.port = ports.first
        self.user = option("user")
        self.password = password
        self.databaseName = option("dbname")
        self.parameters = parameters
        self.rawAuthority = String(hostPort)
        self.rawPath = String(path)
    }

    /// libpq's reading of `url`: every keyword it sets. A libpq error is passed on only when it quotes no
    /// piece of the password.
    private static func libpqOptions(_ url: String, password: String?, rawPassword: String?) throws(SQLError) -> [(key: String, value: String)] {
        var error: UnsafeMutablePointer<CChar>?
        guard let parsed = PQconninfoParse(url, &error) else {
            var message = error.map { String(cString: $0).trimmingTrailingNewlines() } ?? "out of memory"
            if let error { PQfreemem(error) }
            if Self.quotesPart(of: password, in: message) || Self.quotesPart(of: rawPassword, in: message) {
                message = "its message is withheld: it quotes the user-info part"
            }
            throw SQLError(.invalidURL, "libpq cannot read the URL (\(message))")
        }
        defer { PQconninfoFree(parsed) }
        var options: [(key: String, value: String)] = []
        var option = parsed
        while let keyword = option.pointee.keyword {
            if let value = option.pointee.val { options.append((String(cString: keyword), String(cString: value))) }
            option += 1
        }
        return options
    }

    /// Whether `text` contains `secret`, or four characters of it in a row.
    static func quotesPart(of secret: String?, in text: String) -> Bool {
        guard let secret, !secret.isEmpty else { return false }
        let characters = Array(secret)
        if characters.count <= 4 { return text.contains(secret) }
        for start in 0...(characters.count - 4) where text.contains(String(characters[start..<start + 4])) { return true }
        return false
    }

    private static func parsePort(_ text: Substring) throws(SQLError) -> Int {
        guard let port = Int(text), (1...65_535).contains(port) else {
            // Not echoed: with a '/' or '@' left unencoded in the password, this could be part of it.
            throw SQLError(
                .invalidURL, "the port in the URL is not a number from 1 to 65535 (is a '/', '?' or '@' in the password not %-encoded?)")
        }
        return port
    }

    private static func percentDecode(_ text: Substring, what: String) throws(SQLError) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw SQLError(.invalidURL, "the \(what) in the URL has a malformed %-escape")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self) else {
            throw SQLError(.invalidURL, "the \(what) in the URL is not valid UTF-8 once decoded")
        }
        return decoded
    }

    private static func percentDecode(_ text: String, what: String) throws(SQLError) -> String {
        try percentDecode(text[...], what: what)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Keywords whose values are secrets, hidden like the password.
    static let secretKeywords: Set<String> = ["sslpassword"]

    /// The connection keywords of the linked libpq (read from libpq itself: `PQconninfoParse` of an empty
    /// string lists them all, without reading the environment or any file), so that a typo is an error
    /// instead of a silent default, and a newer libpq's keywords work.
    static let libpqKeywords: Set<String> = {
        var error: UnsafeMutablePointer<CChar>?
        guard let all = PQconninfoParse("", &error) else {
            if let error { PQfreemem(error) }
            return []
        }
        defer { PQconninfoFree(all) }
        var keywords = Set<String>()
        var option = all
        while let keyword = option.pointee.keyword {
            keywords.insert(String(cString: keyword))
            option += 1
        }
        return keywords
    }()

    static func isLibpqKeyword(_ key: String) -> Bool { libpqKeywords.contains(key) }

    /// Whether `name` is PostgreSQL's UTF-8 client encoding, under any of the spellings it accepts.
    static func isUTF8(_ name: String) -> Bool {
        ["utf8", "utf-8", "unicode"].contains(name.lowercased())
    }

    /// The session settings every connection starts with, whatever the role's or database's defaults say:
    /// text in UTF-8 (what the driver decodes) and dates in ISO order (what it parses). Sent in the startup
    /// packet, they take precedence over `ALTER ROLE` / `ALTER DATABASE … SET`.
    static let sessionOptions = "-c DateStyle=ISO,MDY -c IntervalStyle=postgres"

    /// The libpq connection keywords and values, password included, for `PQconnectStartParams`: libpq's
    /// reading of the URL, with the session settings the driver needs.
    func libpqParameters() -> [(key: String, value: String)] {
        var result = options.filter { $0.key != "options" && $0.key != "client_encoding" }
        result.append(("client_encoding", "UTF8"))
        // The application's own options first: the driver's come last and win where they overlap.
        let options = self.options.last { $0.key == "options" }.map { $0.value + " " } ?? ""
        result.append(("options", options + Self.sessionOptions))
        return result
    }

    /// The URL with the password replaced by `***`.
    public var description: String {
        switch database {
        case .sqlite:
            // An absolute path starts with '/', which makes the fourth slash of sqlite:////absolute.db.
            let query = parameters.isEmpty ? "" : "?" + parameters.map { "\($0.key)=\($0.value)" }.joined(separator: "&")
            return sqlitePath.map { "sqlite:///\($0)" + query } ?? "sqlite::memory:"
        case .postgresql:
            var text = "postgresql://"
            if let user { text += user + (password == nil ? "" : ":***") + "@" }
            text += rawAuthority
            if !rawPath.isEmpty { text += "/\(rawPath)" }
            if !parameters.isEmpty {
                text += "?" + parameters.map { "\($0.key)=\(Self.secretKeywords.contains($0.key) ? "***" : $0.value)" }
                    .joined(separator: "&")
            }
            return text
        }
    }

    public static func == (lhs: DatabaseURL, rhs: DatabaseURL) -> Bool {
        lhs.database == rhs.database && lhs.host == rhs.host && lhs.port == rhs.port && lhs.user == rhs.user
            && lhs.password == rhs.password && lhs.databaseName == rhs.databaseName
            && lhs.sqlitePath == rhs.sqlitePath && lhs.parameters.elementsEqual(rhs.parameters, by: { $0 == $1 })
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(database)
        hasher.combine(host)
        hasher.combine(port)
        hasher.combine(user)
        hasher.combine(databaseName)
        hasher.combine(sqlitePath)
    }
}
