#if Tracing
public import SQLAsync
public import Tracing

/// Spans for an engine's statements and transactions through swift-distributed-tracing, named and
/// attributed after OpenTelemetry's database conventions: a client span per statement (named after its
/// operation, such as `SELECT`), with `db.system.name`, `db.namespace`, `db.operation.name`, `db.query.text`
/// (the SQL with its placeholders — bound values never appear; a script's text is withheld) and
/// `db.response.returned_rows`, an error
/// recorded on the span when the statement failed; and a span per transaction (`TRANSACTION`), the parent of
/// the statements inside it. A stream is one span from its query to the end of its `stream { }` call (the
/// body's time included), with the rows it handed out.
///
/// ```swift
/// InstrumentationSystem.bootstrap(OTelTracer(…))      // the application's choice, once
/// let engine = try Engine(url, instrumentation: SQLTracing())
/// ```
///
/// Spans are children of the caller's `ServiceContext.current` (a request's span, say). Without a
/// bootstrapped tracer, spans are no-ops; the benchmarks measure what that costs per statement.
public struct SQLTracing: SQLInstrumentation {
    private let start: @Sendable (_ name: String, _ context: ServiceContext) -> any Span
    /// Whether spans go to the bootstrapped tracer (then none are made while it is the no-op one).
    private let global: Bool

    /// Spans through the bootstrapped `InstrumentationSystem.tracer`.
    public init() {
        start = { name, context in startSpan(name, context: context, ofKind: .client) }
        global = true
    }

    /// Spans through `tracer`.
    public init<T: Tracer>(tracer: T) {
        start = { name, context in tracer.startSpan(name, context: context, ofKind: .client) }
        global = false
    }

    /// Nothing bootstrapped: a span would be a no-op, so none is made (no attributes built, nothing boxed).
    private var disabled: Bool { global && InstrumentationSystem.tracer is NoOpTracer }

    public func statementStarted(_ statement: SQLStatementInfo) -> (any SQLStatementSpan)? {
        if disabled { return nil }
        let operation = statement.operation
        let span = start(operation, ServiceContext.current ?? .topLevel)
        span.attributes["db.system.name"] = statement.system.rawValue
        if let namespace = statement.namespace { span.attributes["db.namespace"] = namespace }
        span.attributes["db.operation.name"] = operation
        if let text = statement.text { span.attributes["db.query.text"] = text }
        return StatementSpan(span: span)
    }

    private struct StatementSpan: SQLStatementSpan {
        let span: any Span
        func ended(rows: Int?, error: (any Error)?) {
            if let rows { span.attributes["db.response.returned_rows"] = rows }
            if let error {
                span.recordError(error)
                span.setStatus(SpanStatus(code: .error))
            }
            span.end()
        }
    }

    public func transaction<T>(_ transaction: SQLTransactionInfo, _ body: () async throws -> T) async throws -> T {
        if disabled { return try await body() }
        let span = start(transaction.isNested ? "SAVEPOINT" : "TRANSACTION", ServiceContext.current ?? .topLevel)
        span.attributes["db.system.name"] = transaction.system.rawValue
        if let namespace = transaction.namespace { span.attributes["db.namespace"] = namespace }
        if transaction.readOnly { span.attributes["db.transaction.read_only"] = true }
        defer { span.end() }
        do {
            return try await ServiceContext.withValue(span.context) { try await body() }
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error))
            throw error
        }
    }
}
#endif
