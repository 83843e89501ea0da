#if Tracing
import InMemoryTracing
import Runtime
import SQLAsync
import SQLAsyncTracing
import TestSupport
import Testing
import Tracing

@Suite("Tracing")
struct TracingTests {
    @Test("a span per statement and per transaction, statements inside the transaction's span, no bound value anywhere",
          arguments: TestBackend.selected, IntegrationDatabase.allCases)
    func spans(_ backend: TestBackend, _ database: IntegrationDatabase) async throws {
        let tracer = InMemoryTracer()
        let engine = try Engine(try database.url(), logger: quietLogger, instrumentation: SQLTracing(tracer: tracer))
        let secret = "s3cret-value-\(backend)"
        let literal = "literal-secret-\(backend)"
        try await backend.run {
            try await engine.withConnection { connection in
                try await connection.withTransaction { (connection: Connection) async throws in
                    #expect(try await connection.execute("SELECT \(secret) AS v").scalar(String.self) == secret)
                }
                await #expect(throws: SQLError.self) { try await connection.execute("SELECT * FROM no_such_table") }
                // A script's text is written out whole, literals and all: it stays out of the spans.
                try await connection.executeScript("SELECT 1; SELECT '\(literal)'")
                // A statement whose first word is not one of SQL's usual keywords is named OTHER.
                _ = try await connection.execute("/* comment */ SELECT 2")
                // A stream is one span, with the rows it handed out: all of them, or those read before its
                // body left, with the body's error.
                let streamed = try await connection.stream("SELECT 5 AS streamed UNION ALL SELECT 6 UNION ALL SELECT 7", batchSize: 2) { rows in
                    try await rows.reduce(0) { count, _ in count + 1 }
                }
                #expect(streamed == 3)
                struct Enough: Error {}
                await #expect(throws: Enough.self) {
                    try await connection.stream("SELECT 8 AS left_early UNION ALL SELECT 9 UNION ALL SELECT 10", batchSize: 3) { rows in
                        for try await _ in rows { throw Enough() }
                    }
                }
                // A body that catches its read's cancellation and returns did not get every row: an error too.
                var cut = false
                try await connection.stream("SELECT 11 AS swallowed UNION ALL SELECT 12", batchSize: 1) { rows in
                    let read: Void? = try await withCancelScope { scope in
                        scope.cancel()
                        for try await _ in rows {}
                    }
                    cut = read == nil
                }
                #expect(cut)
            }
            await engine.dispose()
        }
        let spans = tracer.finishedSpans
        let transaction = try #require(spans.first { $0.operationName == "TRANSACTION" }, "spans: \(spans.map(\.operationName))")
        let selects = spans.filter { $0.operationName == "SELECT" }
        #expect(selects.count >= 2)
        func text(_ span: FinishedInMemorySpan) -> String {
            if case .string(let text)? = span.attributes["db.query.text"]?.toSpanAttribute() { return text }
            return ""
        }
        let inside = try #require(selects.first { text($0).contains("AS v") })
        #expect(inside.spanContext.parentSpanID == transaction.spanContext.spanID, "the statement's span is the transaction's child")
        #expect(inside.attributes["db.system.name"]?.toSpanAttribute() == .string(database == .postgresql ? "postgresql" : "sqlite"))
        #expect(inside.attributes["db.response.returned_rows"]?.toSpanAttribute() == .int64(1))
        let failed = try #require(selects.first { text($0).contains("no_such_table") })
        #expect(failed.status?.code == .error)
        #expect(!failed.errors.isEmpty)
        let script = try #require(spans.first { $0.operationName == "SCRIPT" }, "spans: \(spans.map(\.operationName))")
        #expect(script.attributes["db.query.text"] == nil && script.attributes["db.operation.name"]?.toSpanAttribute() == .string("SCRIPT"))
        let stream = try #require(spans.first { text($0).contains("streamed") })
        #expect(stream.operationName == "SELECT" && stream.attributes["db.response.returned_rows"]?.toSpanAttribute() == .int64(3))
        #expect(stream.status?.code != .error)
        let leftEarly = try #require(spans.first { text($0).contains("left_early") })
        // One row of the batch of three was read before the body left.
        #expect(leftEarly.attributes["db.response.returned_rows"]?.toSpanAttribute() == .int64(1) && leftEarly.status?.code == .error)
        let swallowed = try #require(spans.first { text($0).contains("swallowed") })
        #expect(swallowed.status?.code == .error && swallowed.attributes["db.response.returned_rows"]?.toSpanAttribute() == .int64(0))
        let other = try #require(spans.first { text($0).contains("comment") })
        #expect(other.operationName == "OTHER" && other.attributes["db.operation.name"]?.toSpanAttribute() == .string("OTHER"))
        for span in spans {
            span.attributes.forEach { name, value in
                #expect(!"\(value)".contains(secret), "the bound value leaked into \(span.operationName).\(name)")
                #expect(!"\(value)".contains(literal), "a script's text leaked into \(span.operationName).\(name)")
            }
        }
    }
}
#endif
