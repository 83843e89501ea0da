/// A statement whose string interpolations become bound parameters.
///
/// ```swift
/// let name = "O'Brien; DROP TABLE users"
/// let query: SQL = "SELECT id FROM users WHERE name = \(name) AND age > \(30)"
/// // PostgreSQL: SELECT id FROM users WHERE name = $1 AND age > $2   — values bound, never spliced
/// // SQLite:     SELECT id FROM users WHERE name = ? AND age > ?
/// ```
///
/// Text that must be SQL (an identifier chosen at run time, say) goes in only through the explicitly unsafe
/// ``unsafeRaw(_:)`` / `\(unsafeRaw: text)`; quote identifiers with ``identifier(_:)``.
public struct SQL: Sendable, Hashable, ExpressibleByStringInterpolation, CustomStringConvertible {
    enum Fragment: Sendable, Hashable {
        case text(String)
        case value(SQLValue)
        /// A named parameter, given its value at execution (``Connection/execute(_:parameters:)``).
        case parameter(String)
    }

    private(set) var fragments: [Fragment] = []

    public init(stringLiteral value: String) { fragments = value.isEmpty ? [] : [.text(value)] }

    public init(stringInterpolation: StringInterpolation) { fragments = stringInterpolation.fragments }

    init(fragments: [Fragment]) { self.fragments = fragments }

    /// Raw SQL text, inserted as it is. Never pass user input here.
    public static func unsafeRaw(_ text: String) -> SQL { SQL(fragments: [.text(text)]) }

    /// A quoted identifier (table or column name): `"name"`, with embedded quotes doubled.
    public static func identifier(_ name: String) -> SQL {
        SQL(fragments: [.text(quoted(name))])
    }

    /// Appends `other`.
    public mutating func append(_ other: SQL) {
        for fragment in other.fragments {
            if case .text(let text) = fragment { appendText(text) } else { fragments.append(fragment) }
        }
    }

    /// Appends raw text (internal: the query builder's keywords and quoted identifiers).
    mutating func appendText(_ text: String) {
        guard !text.isEmpty else { return }
        if case .text(let previous)? = fragments.last {
            fragments[fragments.count - 1] = .text(previous + text)
        } else {
            fragments.append(.text(text))
        }
    }

    /// Appends a bound value.
    mutating func appendValue(_ value: SQLValue) { fragments.append(.value(value)) }

    /// Appends a named parameter.
    mutating func appendParameter(_ name: String) { fragments.append(.parameter(name)) }

    /// `name` quoted as an identifier.
    static func quoted(_ name: String) -> String { "\"" + name.replacingAll("\"", with: "\"\"") + "\"" }

    /// The bound values, in order (named parameters not included).
    public var values: [SQLValue] {
        fragments.compactMap { if case .value(let value) = $0 { value } else { nil } }
    }

    /// The names of the named parameters, in order of first use.
    public var parameterNames: [String] {
        var seen: Set<String> = []
        return fragments.compactMap { fragment in
            if case .parameter(let name) = fragment, seen.insert(name).inserted { name } else { nil }
        }
    }

    /// The values to bind, one per placeholder: bound values, and named parameters from `parameters`.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when a named parameter has no value, or `parameters` names one the
    ///   statement does not have.
    func binds(_ parameters: [String: SQLValue]) throws(SQLError) -> [SQLValue] {
        try binds(parameters, distinctNames: parameterNames.count) { $0 }
    }

    /// ``binds(_:)`` without converting the dictionary first: `executeMany` calls it once per set, with
    /// `distinctNames` (`parameterNames.count`) counted once for all of them.
    func binds<Value>(
        _ parameters: [String: Value], distinctNames: Int, _ sqlValue: (Value) -> SQLValue
    ) throws(SQLError) -> [SQLValue] {
        var binds: [SQLValue] = []
        binds.reserveCapacity(fragments.count)
        for fragment in fragments {
            switch fragment {
            case .text: continue
            case .value(let value): binds.append(value)
            case .parameter(let name):
                guard let value = parameters[name] else {
                    throw SQLError(.misuse, "the named parameter '\(name)' has no value", sql: description)
                }
                binds.append(sqlValue(value))
            }
        }
        // Every distinct name was found above: more keys than names means some name none of them.
        if parameters.count != distinctNames {
            let names = Set(parameterNames)
            let unknown = parameters.keys.filter { !names.contains($0) }.sorted()
            throw SQLError(
                .misuse, "the statement has no parameter named \(unknown.map { "'\($0)'" }.joined(separator: ", "))",
                sql: description)
        }
        return binds
    }

    /// The text with placeholders for `style`.
    public func text(placeholders style: PlaceholderStyle) -> String {
        var text = ""
        var index = 0
        for fragment in fragments {
            switch fragment {
            case .text(let part): text += part
            case .value, .parameter:
                index += 1
                switch style {
                case .dollarNumbered: text += "$\(index)"
                case .questionMark: text += "?"
                }
            }
        }
        return text
    }

    /// The SQL with `$n` placeholders: never the values.
    public var description: String { text(placeholders: .dollarNumbered) }

    /// How a dialect writes parameter placeholders.
    public enum PlaceholderStyle: Sendable {
        /// PostgreSQL: `$1`, `$2`, …
        case dollarNumbered
        /// SQLite: `?`
        case questionMark
    }

    public struct StringInterpolation: StringInterpolationProtocol, Sendable {
        var fragments: [Fragment] = []

        public init(literalCapacity: Int, interpolationCount: Int) {
            fragments.reserveCapacity(interpolationCount * 2 + 1)
        }

        public mutating func appendLiteral(_ literal: String) {
            guard !literal.isEmpty else { return }
            if case .text(let previous)? = fragments.last {
                fragments[fragments.count - 1] = .text(previous + literal)
            } else {
                fragments.append(.text(literal))
            }
        }

        /// A value: bound as a parameter.
        public mutating func appendInterpolation(_ value: some SQLBindable) {
            fragments.append(.value(value.sqlValue))
        }

        /// An optional value: bound as a parameter, `nil` as SQL NULL.
        public mutating func appendInterpolation<Value: SQLBindable>(_ value: Value?) {
            fragments.append(.value(value?.sqlValue ?? .null))
        }

        /// Another statement fragment, with its own bound values.
        public mutating func appendInterpolation(_ sql: SQL) {
            for fragment in sql.fragments {
                if case .text(let text) = fragment { appendLiteral(text) } else { fragments.append(fragment) }
            }
        }

        /// Raw SQL text. Never pass user input here.
        public mutating func appendInterpolation(unsafeRaw text: String) { appendLiteral(text) }

        /// A named parameter: its value is given at execution, by name.
        ///
        /// ```swift
        /// let byName: SQL = "SELECT id FROM users WHERE name = \(parameter: "name")"
        /// try await connection.execute(byName, parameters: ["name": "ann"])
        /// ```
        public mutating func appendInterpolation(parameter name: String) { fragments.append(.parameter(name)) }
    }
}

extension String {
    /// Every `target` byte doubled — by Unicode scalar, not by character: a quote fused with a combining or
    /// prepended mark into one `Character` must be doubled too, or it would end the quoted text.
    func replacingAll(_ target: Unicode.Scalar, with replacement: String) -> String {
        var result = String.UnicodeScalarView()
        for scalar in unicodeScalars {
            if scalar == target { result.append(contentsOf: replacement.unicodeScalars) } else { result.append(scalar) }
        }
        return String(result)
    }
}
