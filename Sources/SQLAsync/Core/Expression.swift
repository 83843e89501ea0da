/// A Swift type a column (or an expression) holds: bindable, decodable, with a DDL type.
///
/// The standard integer types, `Double`, `Float`, `Bool`, `String`, `[UInt8]`, `Date`, `UUID`, `Decimal` and
/// their optionals conform; ``JSON`` wraps a `Codable` value.
public protocol SQLColumnValue: SQLBindable, SQLDecodable {
    /// The type without its optional: `Int64` for both `Int64` and `Int64?`. Comparisons accept an optional
    /// on either side.
    associatedtype NonOptional: SQLColumnValue
    /// The column type the DDL declares.
    static var columnType: ColumnType { get }
    /// Whether NULL is a value of this type (an `Optional`): the DDL then leaves out `NOT NULL`.
    static var isOptional: Bool { get }
}

extension SQLColumnValue where NonOptional == Self {
    public static var isOptional: Bool { false }
}

extension Optional: SQLColumnValue where Wrapped: SQLColumnValue {
    public typealias NonOptional = Wrapped.NonOptional
    public static var columnType: ColumnType { Wrapped.columnType }
    public static var isOptional: Bool { true }
}

extension Int: SQLColumnValue { public typealias NonOptional = Int; public static var columnType: ColumnType { .int64 } }
extension Int64: SQLColumnValue { public typealias NonOptional = Int64; public static var columnType: ColumnType { .int64 } }
extension Int32: SQLColumnValue { public typealias NonOptional = Int32; public static var columnType: ColumnType { .int32 } }
extension Int16: SQLColumnValue { public typealias NonOptional = Int16; public static var columnType: ColumnType { .int16 } }
extension Int8: SQLColumnValue { public typealias NonOptional = Int8; public static var columnType: ColumnType { .int16 } }
extension Double: SQLColumnValue { public typealias NonOptional = Double; public static var columnType: ColumnType { .double } }
extension Float: SQLColumnValue { public typealias NonOptional = Float; public static var columnType: ColumnType { .float } }
extension Bool: SQLColumnValue { public typealias NonOptional = Bool; public static var columnType: ColumnType { .bool } }
extension String: SQLColumnValue { public typealias NonOptional = String; public static var columnType: ColumnType { .text } }
extension [UInt8]: SQLColumnValue { public typealias NonOptional = [UInt8]; public static var columnType: ColumnType { .bytes } }

/// A piece of a query that renders to SQL: a column, a bound value, an operator applied to others…
///
/// Build them from ``Column``s with Swift operators (`==`, `<`, `&&`, `!`, `+`…) and methods (`in`, `like`,
/// `isNull`…); every Swift value becomes a bound parameter.
public protocol SQLExpressible<Value>: Sendable {
    /// The Swift type of the expression's value.
    associatedtype Value: SQLColumnValue
    /// The expression's syntax tree.
    var node: SQLNode { get }
}

/// A typed expression.
public struct SQLExpression<Value: SQLColumnValue>: SQLExpressible {
    public let node: SQLNode
    init(_ node: SQLNode) { self.node = node }
    init(_ kind: SQLNode.Kind) { node = SQLNode(kind) }

    /// Raw SQL as an expression of type `Value`. Never pass user input here; interpolated values are still
    /// bound.
    public static func unsafeRaw(_ sql: SQL, as type: Value.Type = Value.self) -> SQLExpression { SQLExpression(.raw(sql)) }
}

/// A named parameter whose value is given at execution: compile a statement once, run it with new values.
///
/// ```swift
/// let byID = select(Users.name).from(Users.self).where(Users.id == Parameter<Int64>("id")).compiled()
/// let name = try await connection.execute(byID, parameters: ["id": 42]).scalar(String.self)
/// ```
public struct Parameter<Value: SQLColumnValue>: SQLExpressible {
    public let name: String
    public init(_ name: String, as type: Value.Type = Value.self) { self.name = name }
    public var node: SQLNode { SQLNode(.parameter(name)) }
}

/// A bound value as an expression.
struct BoundValue<Value: SQLColumnValue>: SQLExpressible {
    let value: Value
    var node: SQLNode { SQLNode(.value(value.sqlValue)) }
}

/// The syntax tree of an expression (opaque; build it with ``Column``s and operators).
public struct SQLNode: Sendable {
    indirect enum Kind: Sendable {
        case column(qualifier: String?, name: String)
        case value(SQLValue)
        case parameter(String)
        case binary(SQLNode, String, SQLNode)
        case logical(String, [SQLNode])
        case not(SQLNode)
        case isNull(SQLNode, negated: Bool)
        case between(SQLNode, SQLNode, SQLNode)
        case inList(SQLNode, [SQLNode], negated: Bool)
        case inSelect(SQLNode, Select, negated: Bool)
        case exists(Select)
        case subquery(Select)
        case function(String, [SQLNode], distinct: Bool)
        case cast(SQLNode, String)
        case star(qualifier: String?)
        /// `excluded."column"` in an upsert's update.
        case excluded(String)
        case raw(SQL)
    }

    let kind: Kind
    init(_ kind: Kind) { self.kind = kind }
}

/// How nodes render: the dialect, and whether columns carry their table's name.
struct RenderContext {
    var dialect: SQLDialect
    /// Off in INSERT column lists, UPDATE SET targets and RETURNING, where only the bare name is valid.
    var qualifyColumns = true
}

extension SQLNode {
    func render(into sql: inout SQL, _ context: RenderContext) {
        switch kind {
        case .column(let qualifier, let name):
            if context.qualifyColumns, let qualifier { sql.appendText(SQL.quoted(qualifier) + ".") }
            sql.appendText(SQL.quoted(name))
        case .value(let value):
            sql.appendValue(value)
        case .parameter(let name):
            sql.appendParameter(name)
        case .binary(let lhs, let op, let rhs):
            // Arithmetic binds tighter than comparison: only like-with-like operands need parentheses.
            let arithmetic = Self.arithmeticOperators.contains(op)
            lhs.renderOperand(into: &sql, context, keepBareArithmetic: !arithmetic)
            sql.appendText(" \(op) ")
            rhs.renderOperand(into: &sql, context, keepBareArithmetic: !arithmetic)
        case .logical(let op, let operands):
            for (index, operand) in operands.enumerated() {
                if index > 0 { sql.appendText(" \(op) ") }
                // Predicates go bare; a nested logical operation of the other kind, or raw SQL, in parentheses.
                switch operand.kind {
                case .logical(let inner, _) where inner == op: operand.render(into: &sql, context)
                case .logical, .raw: operand.renderParenthesized(into: &sql, context)
                default: operand.render(into: &sql, context)
                }
            }
        case .not(let operand):
            sql.appendText("NOT ")
            operand.renderOperand(into: &sql, context)
        case .isNull(let operand, let negated):
            operand.renderOperand(into: &sql, context)
            sql.appendText(negated ? " IS NOT NULL" : " IS NULL")
        case .between(let operand, let low, let high):
            operand.renderOperand(into: &sql, context)
            sql.appendText(" BETWEEN ")
            low.renderOperand(into: &sql, context)
            sql.appendText(" AND ")
            high.renderOperand(into: &sql, context)
        case .inList(let operand, let list, let negated):
            operand.renderOperand(into: &sql, context)
            sql.appendText(negated ? " NOT IN (" : " IN (")
            for (index, item) in list.enumerated() {
                if index > 0 { sql.appendText(", ") }
                item.render(into: &sql, context)
            }
            sql.appendText(")")
        case .inSelect(let operand, let select, let negated):
            operand.renderOperand(into: &sql, context)
            sql.appendText(negated ? " NOT IN (" : " IN (")
            select.render(into: &sql, context.dialect)
            sql.appendText(")")
        case .exists(let select):
            sql.appendText("EXISTS (")
            select.render(into: &sql, context.dialect)
            sql.appendText(")")
        case .subquery(let select):
            sql.appendText("(")
            select.render(into: &sql, context.dialect)
            sql.appendText(")")
        case .function(let name, let arguments, let distinct):
            sql.appendText(name + "(" + (distinct ? "DISTINCT " : ""))
            for (index, argument) in arguments.enumerated() {
                if index > 0 { sql.appendText(", ") }
                argument.render(into: &sql, context)
            }
            sql.appendText(")")
        case .cast(let operand, let type):
            sql.appendText("CAST(")
            operand.render(into: &sql, context)
            sql.appendText(" AS \(type))")
        case .star(let qualifier):
            if let qualifier { sql.appendText(SQL.quoted(qualifier) + ".") }
            sql.appendText("*")
        case .excluded(let name):
            sql.appendText("excluded." + SQL.quoted(name))
        case .raw(let raw):
            sql.append(raw)
        }
    }

    static let arithmeticOperators: Set<String> = ["+", "-", "*", "/"]

    /// Renders as an operand of an operator: compound expressions in parentheses (arithmetic ones bare when
    /// `keepBareArithmetic`, as operands of a comparison).
    private func renderOperand(into sql: inout SQL, _ context: RenderContext, keepBareArithmetic: Bool = false) {
        switch kind {
        case .binary(_, let op, _) where keepBareArithmetic && Self.arithmeticOperators.contains(op):
            render(into: &sql, context)
        case .binary, .logical, .not, .isNull, .between, .inList, .inSelect, .raw:
            renderParenthesized(into: &sql, context)
        default:
            render(into: &sql, context)
        }
    }

    private func renderParenthesized(into sql: inout SQL, _ context: RenderContext) {
        sql.appendText("(")
        render(into: &sql, context)
        sql.appendText(")")
    }
}

// MARK: - Operators

/// Compares with `op`; a NULL on the right of `=` / `<>` becomes `IS NULL` / `IS NOT NULL`.
private func compare(_ lhs: SQLNode, _ op: String, _ rhs: SQLNode) -> SQLExpression<Bool> {
    if case .value(.null) = rhs.kind, op == "=" || op == "<>" { return SQLExpression(.isNull(lhs, negated: op == "<>")) }
    return SQLExpression(.binary(lhs, op, rhs))
}

// Expression op expression: the same type, or one side its optional.
public func == <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, "=", rhs.node) }
public func != <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, "<>", rhs.node) }
public func < <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, "<", rhs.node) }
public func <= <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, "<=", rhs.node) }
public func > <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, ">", rhs.node) }
public func >= <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == R.Value.NonOptional { compare(lhs.node, ">=", rhs.node) }

// Expression op Swift value (bound as a parameter; `nil` compares with IS NULL).
public func == <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional?) -> SQLExpression<Bool> { compare(lhs.node, "=", SQLNode(.value(rhs.sqlValue))) }
public func != <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional?) -> SQLExpression<Bool> { compare(lhs.node, "<>", SQLNode(.value(rhs.sqlValue))) }
public func < <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<Bool> { compare(lhs.node, "<", SQLNode(.value(rhs.sqlValue))) }
public func <= <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<Bool> { compare(lhs.node, "<=", SQLNode(.value(rhs.sqlValue))) }
public func > <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<Bool> { compare(lhs.node, ">", SQLNode(.value(rhs.sqlValue))) }
public func >= <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<Bool> { compare(lhs.node, ">=", SQLNode(.value(rhs.sqlValue))) }

func logical(_ op: String, _ sides: [SQLNode]) -> SQLNode {
    // Flatten a AND b AND c into one list.
    var operands: [SQLNode] = []
    for side in sides {
        if case .logical(let inner, let nested) = side.kind, inner == op { operands += nested } else { operands.append(side) }
    }
    return SQLNode(.logical(op, operands))
}

public func && <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == Bool, R.Value.NonOptional == Bool {
    SQLExpression(logical("AND", [lhs.node, rhs.node]))
}
public func || <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<Bool> where L.Value.NonOptional == Bool, R.Value.NonOptional == Bool {
    SQLExpression(logical("OR", [lhs.node, rhs.node]))
}
public prefix func ! <E: SQLExpressible>(operand: E) -> SQLExpression<Bool> where E.Value.NonOptional == Bool {
    SQLExpression(.not(operand.node))
}

/// Numeric types that support SQL arithmetic.
public protocol SQLNumeric: SQLColumnValue {}
extension Int: SQLNumeric {}
extension Int64: SQLNumeric {}
extension Int32: SQLNumeric {}
extension Int16: SQLNumeric {}
extension Int8: SQLNumeric {}
extension Double: SQLNumeric {}
extension Float: SQLNumeric {}
extension Optional: SQLNumeric where Wrapped: SQLNumeric {}

public func + <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<L.Value> where L.Value: SQLNumeric { SQLExpression(.binary(lhs.node, "+", SQLNode(.value(rhs.sqlValue)))) }
public func - <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<L.Value> where L.Value: SQLNumeric { SQLExpression(.binary(lhs.node, "-", SQLNode(.value(rhs.sqlValue)))) }
public func * <L: SQLExpressible>(lhs: L, rhs: L.Value.NonOptional) -> SQLExpression<L.Value> where L.Value: SQLNumeric { SQLExpression(.binary(lhs.node, "*", SQLNode(.value(rhs.sqlValue)))) }
public func + <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<L.Value> where L.Value: SQLNumeric, L.Value == R.Value { SQLExpression(.binary(lhs.node, "+", rhs.node)) }
public func - <L: SQLExpressible, R: SQLExpressible>(lhs: L, rhs: R) -> SQLExpression<L.Value> where L.Value: SQLNumeric, L.Value == R.Value { SQLExpression(.binary(lhs.node, "-", rhs.node)) }

// MARK: - Predicates, ordering, aggregates

extension SQLExpressible {
    /// `expression IN (values…)`, every value bound. An empty list is never true.
    public func `in`(_ values: some Sequence<Value.NonOptional>) -> SQLExpression<Bool> {
        let nodes = values.map { SQLNode(.value($0.sqlValue)) }
        // `x IN ()` is a syntax error: an empty list is a condition that is never true.
        guard !nodes.isEmpty else { return SQLExpression(.raw("1 = 0")) }
        return SQLExpression(.inList(node, nodes, negated: false))
    }

    /// `expression NOT IN (values…)`, every value bound. An empty list is always true.
    public func notIn(_ values: some Sequence<Value.NonOptional>) -> SQLExpression<Bool> {
        let nodes = values.map { SQLNode(.value($0.sqlValue)) }
        guard !nodes.isEmpty else { return SQLExpression(.raw("1 = 1")) }
        return SQLExpression(.inList(node, nodes, negated: true))
    }

    /// `expression IN (subquery)`.
    public func `in`(_ subquery: Select) -> SQLExpression<Bool> { SQLExpression(.inSelect(node, subquery, negated: false)) }

    /// `expression NOT IN (subquery)`.
    public func notIn(_ subquery: Select) -> SQLExpression<Bool> { SQLExpression(.inSelect(node, subquery, negated: true)) }

    /// `expression IS NULL`.
    public func isNull() -> SQLExpression<Bool> { SQLExpression(.isNull(node, negated: false)) }

    /// `expression IS NOT NULL`.
    public func isNotNull() -> SQLExpression<Bool> { SQLExpression(.isNull(node, negated: true)) }

    /// `expression BETWEEN low AND high` (both bound).
    public func between(_ low: Value.NonOptional, and high: Value.NonOptional) -> SQLExpression<Bool> {
        SQLExpression(.between(node, SQLNode(.value(low.sqlValue)), SQLNode(.value(high.sqlValue))))
    }

    /// Ascending order.
    public func asc() -> Ordering { Ordering(node: node, descending: false) }

    /// Descending order.
    public func desc() -> Ordering { Ordering(node: node, descending: true) }

    /// The expression under a name in a select list: `expression AS "name"`.
    public func labeled(_ name: String) -> SelectItem { SelectItem(node: node, label: name) }

    /// `count(expression)`: the number of non-NULL values.
    public func count(distinct: Bool = false) -> SQLExpression<Int64> { SQLExpression(.function("count", [node], distinct: distinct)) }

    /// `max(expression)` (NULL over no rows).
    public func max() -> SQLExpression<Value.NonOptional?> { SQLExpression(.function("max", [node], distinct: false)) }

    /// `min(expression)` (NULL over no rows).
    public func min() -> SQLExpression<Value.NonOptional?> { SQLExpression(.function("min", [node], distinct: false)) }
}

extension SQLExpressible where Value: SQLNumeric {
    /// `sum(expression)` (NULL over no rows). An integer sum is cast back to `BIGINT`: PostgreSQL widens
    /// it to `numeric` (and reports an overflow rather than rounding).
    public func sum() -> SQLExpression<Value.NonOptional?> {
        let sum = SQLNode(.function("sum", [node], distinct: false))
        return SQLExpression(Value.columnType.isInteger ? SQLNode(.cast(sum, "BIGINT")) : sum)
    }

    /// `avg(expression)` as a double (NULL over no rows); PostgreSQL's `numeric` average is cast to
    /// `DOUBLE PRECISION`.
    public func average() -> SQLExpression<Double?> {
        SQLExpression(.cast(SQLNode(.function("avg", [node], distinct: false)), "DOUBLE PRECISION"))
    }
}

extension SQLExpressible where Value.NonOptional == String {
    /// `expression LIKE pattern` (the pattern bound). PostgreSQL compares case-sensitively; SQLite ignores
    /// the case of ASCII letters.
    public func like(_ pattern: String) -> SQLExpression<Bool> {
        SQLExpression(.binary(node, "LIKE", SQLNode(.value(.text(pattern)))))
    }

    /// `expression NOT LIKE pattern`.
    public func notLike(_ pattern: String) -> SQLExpression<Bool> {
        SQLExpression(.binary(node, "NOT LIKE", SQLNode(.value(.text(pattern)))))
    }
}

/// `count(*)`.
public func count() -> SQLExpression<Int64> { SQLExpression(.function("count", [SQLNode(.star(qualifier: nil))], distinct: false)) }

/// `EXISTS (subquery)`.
public func exists(_ subquery: Select) -> SQLExpression<Bool> { SQLExpression(.exists(subquery)) }

/// A scalar subquery, `(SELECT …)`, as an expression of type `Value`.
public func subquery<Value: SQLColumnValue>(_ select: Select, as type: Value.Type) -> SQLExpression<Value> {
    SQLExpression(.subquery(select))
}

/// A term of ORDER BY.
public struct Ordering: Sendable {
    let node: SQLNode
    let descending: Bool
}
