#if Metrics
public import Metrics
public import SQLAsync
import Runtime
import Synchronization

/// An engine's pool and statements as swift-metrics metrics, named after OpenTelemetry's database
/// conventions:
///
/// | Metric | Kind | Dimensions |
/// | --- | --- | --- |
/// | `db.client.connection.count` | gauge | `state`: `used` or `idle`; `pool.id` |
/// | `db.client.connection.pending_requests` | gauge | `pool.id` |
/// | `db.client.connection.wait_time` | timer (checkout) | `outcome`: `success`, `timeout`, `failure` |
/// | `db.client.connection.create_failures` | counter | |
/// | `db.client.operation.duration` | timer | `db.operation.name` (`SELECT`…, `OTHER`), `outcome`: `success`, `error`, `cancelled`, `timeout` |
///
/// Statement metrics and connect failures also have `db.system.name` (`postgresql`, `sqlite`); every metric
/// has `pool.name` when one is given. `pool.id` numbers an engine's pools (one per runtime).
///
/// ```swift
/// MetricsSystem.bootstrap(PrometheusMetricsFactory())      // the application's choice, once
/// let engine = try Engine(url, instrumentation: SQLMetrics(poolName: "main"))
/// ```
///
/// Without a bootstrapped backend swift-metrics records into no-op handlers; the benchmarks measure what
/// that costs per statement (see Benchmarks/README.md).
public struct SQLMetrics: SQLInstrumentation {
    private let poolName: String?
    private let factory: (any MetricsFactory)?
    private let cache: Cache

    /// - Parameters:
    ///   - poolName: a `pool.name` dimension on every metric, to tell engines apart.
    ///   - factory: where the metrics go; the bootstrapped `MetricsSystem.factory` when nil.
    public init(poolName: String? = nil, factory: (any MetricsFactory)? = nil) {
        self.poolName = poolName
        self.factory = factory
        self.cache = Cache()
    }

    /// Metric objects by label and dimensions: made once, so a statement costs a dictionary look-up and a
    /// record, not a handler's creation.
    private final class Cache: Sendable {
        let timers = Locked<[String: Metrics.Timer]>([:])
        let gauges = Locked<[String: Gauge]>([:])
        let counters = Locked<[String: Counter]>([:])
        /// The statement timers, by what tells them apart: a statement builds no array and no string.
        let statementTimers = Locked<[StatementKey: Metrics.Timer]>([:])
        /// Each pool's gauges, by the pool's number: a checkout or a return builds none of their keys.
        let poolGauges = Locked<[Int: PoolGauges]>([:])
        /// The checkout-wait timers, by outcome.
        let checkoutTimers = Locked<[String: Metrics.Timer]>([:])
    }

    private struct StatementKey: Hashable, Sendable {
        let system: SQLDatabaseSystem
        let operation: String
        let outcome: String
    }

    private struct PoolGauges: Sendable {
        let used: Gauge
        let idle: Gauge
        let pending: Gauge
    }

    /// The duration timer of statements of `operation` that ended with `outcome`.
    private func statementTimer(_ system: SQLDatabaseSystem, _ operation: String, _ outcome: String) -> Metrics.Timer {
        let key = StatementKey(system: system, operation: operation, outcome: outcome)
        if let found = cache.statementTimers.withLock({ $0[key] }) { return found }
        let made = timer("db.client.operation.duration", dimensions(system, [("db.operation.name", operation), ("outcome", outcome)]))
        cache.statementTimers.withLock { $0[key] = made }
        return made
    }

    private func dimensions(_ system: SQLDatabaseSystem, _ extra: [(String, String)]) -> [(String, String)] {
        var dimensions = [("db.system.name", system.rawValue)]
        if let poolName { dimensions.append(("pool.name", poolName)) }
        return dimensions + extra
    }

    private static func key(_ label: String, _ dimensions: [(String, String)]) -> String {
        ([label] + dimensions.map { "\($0.0)=\($0.1)" }).joined(separator: "|")
    }

    private func timer(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Timer {
        let key = Self.key(label, dimensions)
        if let timer = cache.timers.withLock({ $0[key] }) { return timer }
        let timer = factory.map { Metrics.Timer(label: label, dimensions: dimensions, factory: $0) }
            ?? Metrics.Timer(label: label, dimensions: dimensions)
        cache.timers.withLock { $0[key] = timer }
        return timer
    }

    private func gauge(_ label: String, _ dimensions: [(String, String)]) -> Gauge {
        let key = Self.key(label, dimensions)
        if let gauge = cache.gauges.withLock({ $0[key] }) { return gauge }
        let gauge = factory.map { Gauge(label: label, dimensions: dimensions, factory: $0) } ?? Gauge(label: label, dimensions: dimensions)
        cache.gauges.withLock { $0[key] = gauge }
        return gauge
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> Counter {
        let key = Self.key(label, dimensions)
        if let counter = cache.counters.withLock({ $0[key] }) { return counter }
        let counter = factory.map { Counter(label: label, dimensions: dimensions, factory: $0) }
            ?? Counter(label: label, dimensions: dimensions)
        cache.counters.withLock { $0[key] = counter }
        return counter
    }

    public func statementStarted(_ statement: SQLStatementInfo) -> (any SQLStatementSpan)? {
        // Nothing bootstrapped: no clock read, no timer look-up, no span to box.
        if factory == nil, MetricsSystem.factory is NOOPMetricsHandler { return nil }
        return StatementTimer(metrics: self, system: statement.system, operation: statement.operation, started: ContinuousClock.now)
    }

    private struct StatementTimer: SQLStatementSpan {
        let metrics: SQLMetrics
        let system: SQLDatabaseSystem
        let operation: String
        let started: ContinuousClock.Instant

        func ended(rows: Int?, error: (any Error)?) {
            let elapsed = started.duration(to: ContinuousClock.now)
            let outcome: String =
                switch error {
                case nil: "success"
                case is CancellationError: "cancelled"
                case let error as SQLError where error.kind == .cancelled: "cancelled"
                case let error as SQLError where error.kind == .timeout: "timeout"
                default: "error"
                }
            metrics.statementTimer(system, operation, outcome).recordNanoseconds(elapsed.saturatingNanoseconds)
        }
    }

    public func checkoutEnded(waited: Duration, outcome: SQLCheckoutOutcome, pool: SQLPoolStatistics) {
        if factory == nil, MetricsSystem.factory is NOOPMetricsHandler { return }
        record(pool)
        let wait = cache.checkoutTimers.withLock { $0[outcome.rawValue] } ?? {
            let made = timer("db.client.connection.wait_time", poolDimensions([("outcome", outcome.rawValue)]))
            cache.checkoutTimers.withLock { $0[outcome.rawValue] = made }
            return made
        }()
        wait.recordNanoseconds(waited.saturatingNanoseconds)
    }

    public func connectionReturned(pool: SQLPoolStatistics) {
        if factory == nil, MetricsSystem.factory is NOOPMetricsHandler { return }
        record(pool)
    }

    public func connectFailed(_ error: any Error, database: SQLDatabaseSystem) {
        counter("db.client.connection.create_failures", dimensions(database, [])).increment()
    }

    private func poolDimensions(_ extra: [(String, String)]) -> [(String, String)] {
        (poolName.map { [("pool.name", $0)] } ?? []) + extra
    }

    /// A pool's gauges carry its number: an engine keeps one pool per runtime, and pools sharing gauges
    /// would overwrite each other's counts.
    private func record(_ pool: SQLPoolStatistics) {
        let gauges = cache.poolGauges.withLock { $0[pool.poolID] } ?? {
            let id = ("pool.id", "\(pool.poolID)")
            let made = PoolGauges(
                used: gauge("db.client.connection.count", poolDimensions([id, ("state", "used")])),
                idle: gauge("db.client.connection.count", poolDimensions([id, ("state", "idle")])),
                pending: gauge("db.client.connection.pending_requests", poolDimensions([id])))
            cache.poolGauges.withLock { $0[pool.poolID] = made }
            return made
        }()
        gauges.used.record(pool.inUse)
        gauges.idle.record(pool.idle)
        gauges.pending.record(pool.waiting)
    }
}

#endif
