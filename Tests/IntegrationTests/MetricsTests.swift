#if Metrics
import MetricsTestKit
import Runtime
import SQLAsync
import SQLAsyncMetrics
import TestSupport
import Testing

@Suite("Metrics")
struct MetricsTests {
    @Test("statements, checkouts and the pool's gauges are recorded, by outcome", arguments: TestBackend.selected, IntegrationDatabase.allCases)
    func recorded(_ backend: TestBackend, _ database: IntegrationDatabase) async throws {
        let metrics = TestMetrics()
        var pool = PoolConfiguration()
        pool.size = 1
        pool.overflow = 0
        let engine = try Engine(try database.url(), pool: pool, logger: quietLogger, instrumentation: SQLMetrics(poolName: "main", factory: metrics))
        try await backend.run {
            try await engine.withConnection { (connection: Connection) async throws in
                #expect(try await connection.execute("SELECT \(41) + 1").scalar(Int.self) == 42)
                await #expect(throws: SQLError.self) { try await connection.execute("SELECT * FROM no_such_table") }
                // The pool's only connection is held: a second checkout times out.
                await #expect { try await engine.connect(timeout: .milliseconds(20)) } throws: { ($0 as? SQLError)?.kind == .poolTimeout }
            }
            await engine.dispose()
        }
        let system = database == .postgresql ? "postgresql" : "sqlite"
        let success = try metrics.expectTimer("db.client.operation.duration", [
            ("db.system.name", system), ("pool.name", "main"), ("db.operation.name", "SELECT"), ("outcome", "success"),
        ])
        #expect(success.values.count == 1)
        let failed = try metrics.expectTimer("db.client.operation.duration", [
            ("db.system.name", system), ("pool.name", "main"), ("db.operation.name", "SELECT"), ("outcome", "error"),
        ])
        #expect(failed.values.count == 1)
        #expect(try metrics.expectTimer("db.client.connection.wait_time", [("pool.name", "main"), ("outcome", "success")]).values.count == 1)
        #expect(try metrics.expectTimer("db.client.connection.wait_time", [("pool.name", "main"), ("outcome", "timeout")]).values.count == 1)
        // After the connection came back: one open, idle, nobody waiting — in the one pool (one runtime) there was.
        func gauges(_ label: String, state: String?) -> [TestRecorder] {
            metrics.recorders(label: label).filter { recorder in
                recorder.dimensions.contains { $0 == ("pool.name", "main") } && recorder.dimensions.contains { $0.0 == "pool.id" }
                    && (state.map { state in recorder.dimensions.contains { $0 == ("state", state) } } ?? true)
            }
        }
        #expect(gauges("db.client.connection.count", state: "used").map(\.lastValue) == [0])
        #expect(gauges("db.client.connection.count", state: "idle").map(\.lastValue) == [1])
        #expect(gauges("db.client.connection.pending_requests", state: nil).map(\.lastValue) == [0])
    }

    @Test("a failed connect is counted", arguments: TestBackend.selected)
    func connectFailures(_ backend: TestBackend) async throws {
        let metrics = TestMetrics()
        // Port 1 on loopback refuses at once.
        let engine = try Engine("postgresql://nobody@127.0.0.1:1/none?connect_timeout=5", logger: quietLogger, instrumentation: SQLMetrics(factory: metrics))
        try await backend.run {
            await #expect(throws: SQLError.self) { try await engine.withConnection { _ in } }
            await engine.dispose()
        }
        #expect(try metrics.expectCounter("db.client.connection.create_failures", [("db.system.name", "postgresql")]).totalValue == 1)
    }
}
#endif
