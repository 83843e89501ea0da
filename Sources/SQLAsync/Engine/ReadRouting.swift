import Logging
import Runtime

/// Where an engine's read-only work goes: PostgreSQL standbys, each skipped while it lags too far behind
/// the primary or cannot be reached.
///
/// ```swift
/// var routing = try ReadRouting(standbys: ["postgresql://app@replica1/app", "postgresql://app@replica2/app"])
/// routing.maxLag = .seconds(2)
/// let engine = try Engine("postgresql://app@primary/app", readRouting: routing)
/// let names = try await engine.read { try await $0.execute("SELECT name FROM users").scalars(String.self) }
/// ```
///
/// With routing, ``Engine/read(isolationLevel:isolation:_:)``, ``Engine/begin(isolationLevel:readOnly:isolation:_:)``
/// with `readOnly`, and ``Engine/withSession(readOnly:isolation:_:)`` with `readOnly` run on a standby, in a
/// read-only transaction; everything else runs on the primary. A standby serves a read when it answers and
/// lags at most ``maxLag`` behind; its lag is read on a connection to it at most once per
/// ``checkInterval``. A read that must see its own earlier writes goes through ``Engine/readYourWrites()``.
public struct ReadRouting: Sendable {
    /// The standbys, tried in turn. Each gets a pool of its own (``pool``).
    public var standbys: [DatabaseURL]
    /// How far a standby may lag behind the primary and still serve reads (default 10 s): zero when it has
    /// replayed the log up to the end the primary last told it of, while streaming and heard from the primary
    /// within the last minute (an idle primary sends nothing to replay, only keepalives); otherwise the time
    /// since the last transaction it replayed (`pg_last_xact_replay_timestamp()`) — a standby catching up, or
    /// cut off from its primary, is judged by the age of what it has.
    public var maxLag: Duration = .seconds(10)
    /// How often a standby's lag is read (default 1 s); a standby that could not be reached is skipped this
    /// long (at least 1 s).
    public var checkInterval: Duration = .seconds(1)
    /// Each standby's pool.
    public var pool = PoolConfiguration()
    /// When no standby fits: run the read on the primary (the default), or fail with
    /// ``SQLError/Kind/connection``.
    public var fallbackToPrimary = true

    /// - Throws: ``SQLError/Kind/invalidURL`` for a URL that is not a PostgreSQL one.
    public init(standbys: [DatabaseURL]) throws(SQLError) {
        for standby in standbys where standby.database != .postgresql {
            throw SQLError(.invalidURL, "a standby must be a PostgreSQL URL, not \(standby)")
        }
        self.standbys = standbys
    }

    /// - Throws: ``SQLError/Kind/invalidURL`` naming the problem (never a password).
    public init(standbys: [String]) throws(SQLError) {
        var parsed: [DatabaseURL] = []
        for standby in standbys { parsed.append(try DatabaseURL(standby)) }
        try self.init(standbys: parsed)
    }
}

/// An engine's standbys and the router choosing among them.
final class Standbys: Sendable {
    let engines: [Engine]
    let router: Locked<ReadRouter>
    let fallbackToPrimary: Bool

    init(_ routing: ReadRouting, logger: Logger, password: Engine.PasswordProvider?, instrumentation: (any SQLInstrumentation)?) {
        // The primary's observers watch the standbys too: a read routed to one is traced and counted.
        engines = routing.standbys.map {
            Engine(url: $0, pool: routing.pool, logger: logger, password: password, instrumentation: instrumentation)
        }
        router = Locked(ReadRouter(standbys: routing.standbys.count, maxLag: routing.maxLag, checkInterval: routing.checkInterval))
        fallbackToPrimary = routing.fallbackToPrimary
    }

    /// What a standby says of itself: in recovery, how far it replayed, and its lag in seconds (see
    /// ``ReadRouting/maxLag``; 1e9 when it never replayed a transaction and is not caught up). The primary's
    /// end of the log is the one its last message carried (`latest_end_lsn`): what the standby merely
    /// received may itself be far behind, while it catches up.
    static let stateQuery = """
        SELECT pg_is_in_recovery(), COALESCE(pg_last_wal_replay_lsn()::text, ''), CASE \
        WHEN NOT pg_is_in_recovery() THEN 0 \
        WHEN EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming' \
        AND pg_last_wal_replay_lsn() >= latest_end_lsn AND last_msg_receipt_time > now() - interval '60 seconds') THEN 0 \
        ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 1e9) END::float8
        """
}
