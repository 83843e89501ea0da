import Runtime
@testable import SQLAsync
import TestSupport
import Testing

enum FuzzRows: TableSchema {
    static let tableName = "fuzz_rows"
    static let id = Column<Int64>("id", of: FuzzRows.self, .primaryKey)
    static let a = Column<Int64?>("a", of: FuzzRows.self)
    static let b = Column<Int64?>("b", of: FuzzRows.self)
    static let s = Column<String?>("s", of: FuzzRows.self)
    static let flag = Column<Bool?>("flag", of: FuzzRows.self)
    static let columns: [any AnyColumn] = [id, a, b, s, flag]
}

/// Random query trees compiled by Core and run on both databases: both give the answer a direct evaluation
/// in Swift gives (SQL's three-valued logic included), so precedence, parentheses, NULL handling, empty
/// lists and the dialects' differences are checked against each other and against the definition.
@Suite("Fuzzing: the Core compiler on both databases", .limit(minutes: 2))
struct FuzzCoreTests {
    struct Row { var id: Int64, a: Int64?, b: Int64?, s: String?, flag: Bool? }

    /// An integer-valued expression.
    indirect enum Term: CustomStringConvertible {
        case a, b
        case plus(Term, Term), minus(Term, Term), plusConstant(Term, Int64), times(Term, Int64)

        var expression: SQLExpression<Int64?> {
            switch self {
            case .a: SQLExpression(FuzzRows.a.node)
            case .b: SQLExpression(FuzzRows.b.node)
            case .plus(let l, let r): l.expression + r.expression
            case .minus(let l, let r): l.expression - r.expression
            case .plusConstant(let t, let k): t.expression + k
            case .times(let t, let k): t.expression * k
            }
        }

        func value(_ row: Row) -> Int64? {
            switch self {
            case .a: row.a
            case .b: row.b
            case .plus(let l, let r): l.value(row).flatMap { x in r.value(row).map { x + $0 } }
            case .minus(let l, let r): l.value(row).flatMap { x in r.value(row).map { x - $0 } }
            case .plusConstant(let t, let k): t.value(row).map { $0 + k }
            case .times(let t, let k): t.value(row).map { $0 * k }
            }
        }

        var description: String {
            switch self {
            case .a: "a"
            case .b: "b"
            case .plus(let l, let r): "(\(l) + \(r))"
            case .minus(let l, let r): "(\(l) - \(r))"
            case .plusConstant(let t, let k): "(\(t) + \(k))"
            case .times(let t, let k): "(\(t) * \(k))"
            }
        }
    }

    enum Comparison: CaseIterable { case eq, ne, lt, le, gt, ge }

    /// A condition.
    indirect enum Predicate: CustomStringConvertible {
        case compare(Term, Comparison, Term)
        case compareConstant(Term, Comparison, Int64)
        case equalsNil(Term, negated: Bool)
        case id(Comparison, Int64)
        case isNull(column: Int, negated: Bool)
        case inList(Term, [Int64], negated: Bool)
        case between(Term, Int64, Int64)
        case like(String, negated: Bool)
        case text(String?, negated: Bool)
        case flag, flagEquals(Bool)
        case and(Predicate, Predicate), or(Predicate, Predicate), not(Predicate)

        var expression: SQLExpression<Bool> {
            func compare<L: SQLExpressible, R: SQLExpressible>(_ l: L, _ op: Comparison, _ r: R) -> SQLExpression<Bool>
            where L.Value.NonOptional == R.Value.NonOptional {
                switch op {
                case .eq: l == r
                case .ne: l != r
                case .lt: l < r
                case .le: l <= r
                case .gt: l > r
                case .ge: l >= r
                }
            }
            func compare<L: SQLExpressible>(_ l: L, _ op: Comparison, constant k: Int64) -> SQLExpression<Bool> where L.Value.NonOptional == Int64 {
                switch op {
                case .eq: l == k
                case .ne: l != k
                case .lt: l < k
                case .le: l <= k
                case .gt: l > k
                case .ge: l >= k
                }
            }
            switch self {
            case .compare(let l, let op, let r): return compare(l.expression, op, r.expression)
            case .compareConstant(let t, let op, let k): return compare(t.expression, op, constant: k)
            case .equalsNil(let t, let negated): return negated ? t.expression != nil : t.expression == nil
            case .id(let op, let k): return compare(FuzzRows.id, op, constant: k)
            case .isNull(let column, let negated):
                let node = [FuzzRows.a.node, FuzzRows.b.node, FuzzRows.s.node, FuzzRows.flag.node][column]
                let expression = SQLExpression<Int64?>(node)
                return negated ? expression.isNotNull() : expression.isNull()
            case .inList(let t, let list, let negated): return negated ? t.expression.notIn(list) : t.expression.in(list)
            case .between(let t, let low, let high): return t.expression.between(low, and: high)
            case .like(let pattern, let negated): return negated ? FuzzRows.s.notLike(pattern) : FuzzRows.s.like(pattern)
            case .text(let text, let negated): return negated ? FuzzRows.s != text : FuzzRows.s == text
            case .flag: return SQLExpression(FuzzRows.flag.node)
            case .flagEquals(let value): return FuzzRows.flag == value
            case .and(let l, let r): return l.expression && r.expression
            case .or(let l, let r): return l.expression || r.expression
            case .not(let p): return !p.expression
            }
        }

        /// SQL's answer: `nil` is unknown.
        func value(_ row: Row) -> Bool? {
            func compare(_ l: Int64?, _ op: Comparison, _ r: Int64?) -> Bool? {
                guard let l, let r else { return nil }
                switch op {
                case .eq: return l == r
                case .ne: return l != r
                case .lt: return l < r
                case .le: return l <= r
                case .gt: return l > r
                case .ge: return l >= r
                }
            }
            switch self {
            case .compare(let l, let op, let r): return compare(l.value(row), op, r.value(row))
            case .compareConstant(let t, let op, let k): return compare(t.value(row), op, k)
            case .equalsNil(let t, let negated): return (t.value(row) == nil) != negated
            case .id(let op, let k): return compare(row.id, op, k)
            case .isNull(let column, let negated):
                let isNull = [row.a == nil, row.b == nil, row.s == nil, row.flag == nil][column]
                return isNull != negated
            case .inList(let t, let list, let negated):
                if list.isEmpty { return negated }
                guard let value = t.value(row) else { return nil }
                return list.contains(value) != negated
            case .between(let t, let low, let high):
                guard let value = t.value(row) else { return nil }
                return low <= value && value <= high
            case .like(let pattern, let negated):
                guard let s = row.s else { return nil }
                return FuzzCoreTests.like(Array(s), Array(pattern)) != negated
            case .text(let text, let negated):
                guard let text else { return (row.s == nil) != negated }
                guard let s = row.s else { return nil }
                return (s == text) != negated
            case .flag: return row.flag
            case .flagEquals(let value): return row.flag.map { $0 == value }
            case .and(let l, let r):
                let (x, y) = (l.value(row), r.value(row))
                if x == false || y == false { return false }
                return x == true && y == true ? true : nil
            case .or(let l, let r):
                let (x, y) = (l.value(row), r.value(row))
                if x == true || y == true { return true }
                return x == false && y == false ? false : nil
            case .not(let p): return p.value(row).map { !$0 }
            }
        }

        var description: String {
            switch self {
            case .compare(let l, let op, let r): "\(l) \(op) \(r)"
            case .compareConstant(let t, let op, let k): "\(t) \(op) \(k)"
            case .equalsNil(let t, let negated): "\(t) \(negated ? "!=" : "==") nil"
            case .id(let op, let k): "id \(op) \(k)"
            case .isNull(let column, let negated): "\(["a", "b", "s", "flag"][column]) IS \(negated ? "NOT " : "")NULL"
            case .inList(let t, let list, let negated): "\(t) \(negated ? "NOT IN" : "IN") \(list)"
            case .between(let t, let low, let high): "\(t) BETWEEN \(low) AND \(high)"
            case .like(let pattern, let negated): "s \(negated ? "NOT LIKE" : "LIKE") '\(pattern)'"
            case .text(let text, let negated): "s \(negated ? "!=" : "==") \(text.map { "'\($0)'" } ?? "nil")"
            case .flag: "flag"
            case .flagEquals(let value): "flag == \(value)"
            case .and(let l, let r): "(\(l) AND \(r))"
            case .or(let l, let r): "(\(l) OR \(r))"
            case .not(let p): "NOT (\(p))"
            }
        }
    }

    /// LIKE with `%` and `_` (no escape character: the dialects differ there, and the generator never makes one).
    static func like(_ text: [Character], _ pattern: [Character]) -> Bool {
        guard let first = pattern.first else { return text.isEmpty }
        switch first {
        case "%": return (0...text.count).contains { like(Array(text[$0...]), Array(pattern.dropFirst())) }
        case "_": return !text.isEmpty && like(Array(text.dropFirst()), Array(pattern.dropFirst()))
        default: return text.first == first && like(Array(text.dropFirst()), Array(pattern.dropFirst()))
        }
    }

    static let texts: [String?] = [nil, "", "a", "ab", "abc", "b", "ba", "x_y", "x%y", "it's", "é"]
    static let patterns = ["a%", "%b", "_", "%", "a_c", "x_y", "", "é", "%'%", "__"]

    static func term(depth: Int, _ random: inout some RandomNumberGenerator) -> Term {
        if depth == 0 || random.chance(0.4) { return random.chance(0.5) ? .a : .b }
        switch Int.random(in: 0..<4, using: &random) {
        case 0: return .plus(term(depth: depth - 1, &random), term(depth: depth - 1, &random))
        case 1: return .minus(term(depth: depth - 1, &random), term(depth: depth - 1, &random))
        case 2: return .plusConstant(term(depth: depth - 1, &random), Int64.random(in: -5...5, using: &random))
        default: return .times(term(depth: depth - 1, &random), Int64.random(in: -3...3, using: &random))
        }
    }

    static func predicate(depth: Int, _ random: inout some RandomNumberGenerator) -> Predicate {
        func small() -> Int64 { Int64.random(in: -6...6, using: &random) }
        if depth > 0 && random.chance(0.55) {
            switch Int.random(in: 0..<3, using: &random) {
            case 0: return .and(predicate(depth: depth - 1, &random), predicate(depth: depth - 1, &random))
            case 1: return .or(predicate(depth: depth - 1, &random), predicate(depth: depth - 1, &random))
            default: return .not(predicate(depth: depth - 1, &random))
            }
        }
        let op = random.pick(Comparison.allCases)
        switch Int.random(in: 0..<12, using: &random) {
        case 0: return .compare(term(depth: 2, &random), op, term(depth: 2, &random))
        case 1: return .compareConstant(term(depth: 2, &random), op, small())
        case 2: return .equalsNil(term(depth: 1, &random), negated: random.chance(0.5))
        case 3: return .id(op, Int64.random(in: 0...31, using: &random))
        case 4: return .isNull(column: Int.random(in: 0..<4, using: &random), negated: random.chance(0.5))
        case 5: return .inList(term(depth: 1, &random), (0..<Int.random(in: 0...4, using: &random)).map { _ in small() }, negated: random.chance(0.5))
        case 6: return .between(term(depth: 1, &random), small(), small())
        case 7: return .like(random.pick(patterns), negated: random.chance(0.5))
        case 8: return .text(random.pick(texts), negated: random.chance(0.5))
        case 9: return .flag
        case 10: return .flagEquals(random.chance(0.5))
        default: return .compare(term(depth: 0, &random), op, term(depth: 1, &random))
        }
    }

    /// One random query: its rows (id and a computed term), or its aggregates.
    struct Query {
        let predicate: Predicate
        let term: Term
        let limit: Int?
        let offset: Int?
        let aggregate: Bool

        var statement: Select {
            if aggregate {
                return select(count().labeled("n"), term.expression.sum().labeled("total"), term.expression.max().labeled("most"),
                              term.expression.count().labeled("known"))
                    .from(FuzzRows.self).where(predicate.expression)
            }
            var query = select(FuzzRows.id, term.expression.labeled("t")).from(FuzzRows.self).where(predicate.expression)
                .orderBy(FuzzRows.id.asc())
            if let limit { query = query.limit(limit) }
            if let offset { query = query.offset(offset) }
            return query
        }

        /// The answer, as text to compare.
        func expected(_ rows: [Row]) -> [String] {
            let kept = rows.filter { predicate.value($0) == true }.sorted { $0.id < $1.id }
            if aggregate {
                let values = kept.compactMap { term.value($0) }
                return ["\(kept.count) \(values.isEmpty ? "nil" : "\(values.reduce(0, +))") \(values.max().map(String.init) ?? "nil") \(values.count)"]
            }
            let window = kept.dropFirst(offset ?? 0).prefix(limit ?? Int.max)
            return window.map { "\($0.id) \(term.value($0).map(String.init) ?? "nil")" }
        }

        func answer(_ result: QueryResult) throws -> [String] {
            if aggregate {
                let row = try result.one()
                let total = try row.decode("total", as: Int64?.self), most = try row.decode("most", as: Int64?.self)
                return ["\(try row.decode("n", as: Int64.self)) \(total.map(String.init) ?? "nil") \(most.map(String.init) ?? "nil") \(try row.decode("known", as: Int64.self))"]
            }
            return try result.map { "\(try $0.decode("id", as: Int64.self)) \(try $0.decode("t", as: Int64?.self).map(String.init) ?? "nil")" }
        }
    }

    @Test("random query trees: SQLite, PostgreSQL and a direct evaluation agree", arguments: TestBackend.selected)
    func queries(_ backend: TestBackend) async throws {
        var random = Fuzz.generator("core-\(backend)")
        let rows = (1...30).map { id in
            Row(id: Int64(id), a: random.chance(0.2) ? nil : Int64.random(in: -5...5, using: &random),
                b: random.chance(0.2) ? nil : Int64.random(in: -5...5, using: &random), s: random.pick(Self.texts),
                flag: random.chance(0.25) ? nil : random.chance(0.5))
        }
        let queries = (0..<(250 * Fuzz.scale)).map { _ in
            Query(predicate: Self.predicate(depth: 4, &random), term: Self.term(depth: 2, &random),
                  limit: random.chance(0.3) ? Int.random(in: 0...10, using: &random) : nil,
                  offset: random.chance(0.2) ? Int.random(in: 0...10, using: &random) : nil,
                  aggregate: random.chance(0.2))
        }
        try await TestDatabase.withBothDatabases(backend) { sqlite, postgres in
            let metadata = Metadata(FuzzRows.self)
            for connection in [sqlite, postgres] {
                try await metadata.createAll(on: connection)
                for row in rows {
                    try await connection.execute(insert(into: FuzzRows.self).values(
                        FuzzRows.id.set(row.id), FuzzRows.a.set(row.a), FuzzRows.b.set(row.b), FuzzRows.s.set(row.s), FuzzRows.flag.set(row.flag)))
                }
            }
            for query in queries {
                let expected = query.expected(rows)
                let statement = query.statement
                let onSQLite = try query.answer(try await sqlite.execute(statement))
                let onPostgres = try query.answer(try await postgres.execute(statement))
                if onSQLite != expected || onPostgres != expected {
                    let text = (try? statement.compiled().text(for: .postgresql)) ?? "?"
                    Issue.record("""
                        WHERE \(query.predicate), term \(query.term), limit \(query.limit.map(String.init) ?? "-"), offset \
                        \(query.offset.map(String.init) ?? "-"): expected \(expected), SQLite \(onSQLite), PostgreSQL \(onPostgres); \
                        SQL: \(text) (\(Fuzz.replay))
                        """)
                    return
                }
            }
        }
    }
}

extension TestDatabase {
    /// Runs `body` on `backend` with a private SQLite database and a connection to a fresh PostgreSQL schema
    /// (dropped afterwards, whatever happens).
    static func withBothDatabases(_ backend: TestBackend, _ body: @escaping (Connection, Connection) async throws -> Void) async throws {
        let sqlite = try TestDatabase.sqlite.engine()
        try await TestDatabase.postgresql.withPrivateConnection(backend) { connection in
            try await sqlite.withConnection { sqliteConnection in try await body(sqliteConnection, connection) }
            await sqlite.dispose()
        }
    }
}
