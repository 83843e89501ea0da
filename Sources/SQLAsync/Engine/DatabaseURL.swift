/// Where a database is, parsed from a URL.
///
/// - `postgresql://user:password@host:5432/database?sslmode=require&application_name=app` (also
///   `postgres://`); every query parameter is passed to libpq as a connection keyword; user, password and
///   path segments are percent-decoded; the host may be a bracketed IPv6 address.
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

    /// PostgreSQL: the host name or address (`nil`: libpq's default, a local socket).
    public let host: String?
    /// PostgreSQL: the port.
    public let port: Int?
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
        if string == "sqlite::memory:" || string == "sqlite://" || string == "sqlite:///:memory:" {
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
            self.init(sqlitePath: try Self.percentDecode(path, what: "SQLite path"), parameters: parameters)
            return
        }
        let rest: Substring
        if string.hasPrefix("postgresql://") {
            rest = string.dropFirst("postgresql://".count)
        } else if string.hasPrefix("postgres://") {
            rest = string.dropFirst("postgres://".count)
        } else {
            let scheme = string.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
            throw SQLError(
                .invalidURL, "unsupported database URL scheme '\(scheme)'; use postgresql:// or sqlite://")
        }
        try self.init(postgresRest: rest)
    }

    private init(sqlitePath: String?, parameters: [(key: String, value: String)] = []) {
        database = .sqlite
        self.sqlitePath = sqlitePath
        host = nil
        port = nil
        user = nil
        password = nil
        databaseName = nil
        self.parameters = parameters
    }

    /// SQLite: how the file is opened, from the URL's `mode` (SQLite's URI names): `ro` read-only, `rw`
    /// read-write without creating it, `rwc` (the default) read-write, created when missing.
    var sqliteMode: String { parameters.last { $0.key == "mode" }?.value ?? "rwc" }

    private init(postgresRest rest: Substring) throws(SQLError) {
        database = .postgresql
        sqlitePath = nil
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
        var user: String?
        var password: String?
        if let at = remainder.lastIndex(of: "@") {
            let userInfo = remainder[..<at]
            hostPort = remainder[remainder.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = try Self.percentDecode(userInfo[..<colon], what: "user name")
                password = try Self.percentDecode(userInfo[userInfo.index(after: colon)...], what: "password")
            } else {
                user = try Self.percentDecode(userInfo, what: "user name")
            }
        }
        var host: String?
        var port: Int?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else {
                throw SQLError(.invalidURL, "an IPv6 host in the URL lacks its closing ']'")
            }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if after.hasPrefix(":") { port = try Self.parsePort(after.dropFirst()) } else if !after.isEmpty {
                throw SQLError(.invalidURL, "unexpected text after the IPv6 host in the URL")
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = String(hostPort[..<colon])
            port = try Self.parsePort(hostPort[hostPort.index(after: colon)...])
        } else if !hostPort.isEmpty {
            host = String(hostPort)
        }
        if host?.isEmpty == true { host = nil }
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
                let name = key.allSatisfy { $0.isASCII && ($0.isLetter || $0 == "_") } && key.count <= 40 ? "'\(key)' " : ""
                throw SQLError(.invalidURL, "the URL parameter \(name)is not a libpq connection keyword")
            }
            guard key != "password" else {
                throw SQLError(.invalidURL, "put the password in the URL's user-info part, not in a parameter")
            }
            if key == "client_encoding", !Self.isUTF8(value) {
                // The driver decodes every text value as UTF-8: another encoding would alter text silently.
                throw SQLError(
                    .invalidURL,
                    "client_encoding must be UTF8 (the driver reads and writes all text as UTF-8), not '\(value)'")
            }
            parameters.append((key, value))
        }
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        // A '@' after the first '/' means a password with a '/' left unencoded: refused, or a piece of it would
        // become the database name and show in the description.
        guard !path.contains("@") else {
            throw SQLError(.invalidURL, "the database name in the URL contains '@' (is a '/' in the password not %-encoded?)")
        }
        self.databaseName = path.isEmpty ? nil : try Self.percentDecode(path, what: "database name")
        self.parameters = parameters
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

    /// libpq's connection keywords (PostgreSQL 15), so that a typo is an error instead of a silent default.
    static func isLibpqKeyword(_ key: String) -> Bool {
        [
            "host", "hostaddr", "port", "dbname", "user", "passfile", "channel_binding", "connect_timeout",
            "client_encoding", "options", "application_name", "fallback_application_name", "keepalives",
            "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout", "replication",
            "gssencmode", "sslmode", "requiressl", "sslcompression", "sslcert", "sslkey", "sslpassword",
            "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
            "ssl_max_protocol_version", "krbsrvname", "gsslib", "service", "target_session_attrs",
            "load_balance_hosts",
        ].contains(key)
    }

    /// Whether `name` is PostgreSQL's UTF-8 client encoding, under any of the spellings it accepts.
    static func isUTF8(_ name: String) -> Bool {
        ["utf8", "utf-8", "unicode"].contains(name.lowercased())
    }

    /// The session settings every connection starts with, whatever the role's or database's defaults say:
    /// text in UTF-8 (what the driver decodes) and dates in ISO order (what it parses). Sent in the startup
    /// packet, they take precedence over `ALTER ROLE` / `ALTER DATABASE … SET`.
    static let sessionOptions = "-c DateStyle=ISO,MDY -c IntervalStyle=postgres"

    /// The libpq connection keywords and values, password included, for `PQconnectStartParams`.
    func libpqParameters() -> [(key: String, value: String)] {
        var result: [(key: String, value: String)] = []
        if let host { result.append(("host", host)) }
        if let port { result.append(("port", String(port))) }
        if let user { result.append(("user", user)) }
        if let password { result.append(("password", password)) }
        if let databaseName { result.append(("dbname", databaseName)) }
        result.append(contentsOf: parameters.filter { $0.key != "options" && $0.key != "client_encoding" })
        result.append(("client_encoding", "UTF8"))
        // The application's own options first: the driver's come last and win where they overlap.
        let options = parameters.last { $0.key == "options" }.map { $0.value + " " } ?? ""
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
            if let host { text += host.contains(":") ? "[\(host)]" : host }
            if let port { text += ":\(port)" }
            if let databaseName { text += "/\(databaseName)" }
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
