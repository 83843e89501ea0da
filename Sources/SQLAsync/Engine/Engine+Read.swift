import Runtime

// Read-only work, routed to a standby when the engine has ReadRouting, and the scope whose reads see its own
// writes. The choice of server is ReadRouter's; this file does the IO.

extension Engine {
    /// Runs `body` in a read-only transaction: on a standby when the engine routes reads (``ReadRouting``),
    /// else on the primary. The transaction commits when `body` returns (it can write nothing) and rolls back
    /// when it throws.
    ///
    /// Reads through here may not see writes the caller just made on the primary (a standby replays them
    /// a moment later): use ``readYourWrites()`` for work that must.
    ///
    /// - Throws: what `body` throws; ``SQLError/Kind/connection`` when no standby fits and
    ///   ``ReadRouting/fallbackToPrimary`` is off; `CancellationError`.
    @discardableResult
    public func read<T>(
        isolationLevel: IsolationLevel? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        try await withReadConnection(after: nil) { connection in
            try await connection.withTransaction(isolationLevel: isolationLevel, readOnly: true, body)
        }
    }

    /// A scope whose reads see its own writes: its ``ReadYourWrites/begin(isolationLevel:isolation:_:)``
    /// runs on the primary and remembers how far the primary's log went; its
    /// ``ReadYourWrites/read(isolationLevel:isolation:_:)`` runs on a standby only once that standby has
    /// replayed that far, else on the primary. Keep one per user request, or per session of a user.
    public func readYourWrites() -> ReadYourWrites { ReadYourWrites(engine: self) }

    /// Runs `body` on a connection to a server that may serve a read which must see the writes up to `after`:
    /// a standby that fits, else the primary (or a failure, when the routing says so).
    func withReadConnection<T>(
        after: LogPosition?,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        guard let standbys else { return try await withConnection(body) }
        let runtime = try Runtime.current
        var tried: Set<Int> = []
        while true {
            let choice = standbys.router.withLock { $0.choose(now: runtime.now, after: after, excluding: tried) }
            guard case .standby(let index, let check) = choice else {
                guard standbys.fallbackToPrimary else {
                    throw SQLError(.connection, "no standby can serve the read (unreachable, or lagging behind), and the routing does not fall back to the primary")
                }
                return try await withConnection(body)
            }
            tried.insert(index)
            let connection: Connection
            do {
                connection = try await standbys.engines[index].connect()
            } catch let error as SQLError where error.kind == .connection || error.kind == .timeout || error.kind == .poolTimeout {
                standbys.router.withLock { $0.failed(index, now: runtime.now) }
                logger.warning("a standby is skipped: it cannot be reached", metadata: ["standby": "\(standbys.engines[index].url)", "error": "\(error.kind)"])
                continue
            }
            // A read that must see earlier writes checks the connection it got, whatever the last reading
            // said: a standby URL may reach more than one server (a reader endpoint, DNS round robin).
            if check || after != nil {
                let fits: Bool
                do {
                    fits = try await checkStandby(index, connection, after: after, runtime: runtime)
                } catch let error as SQLError where error.kind == .connection || error.kind == .timeout {
                    await connection.close()
                    standbys.router.withLock { $0.failed(index, now: runtime.now) }
                    continue
                } catch {
                    await connection.close()
                    throw error
                }
                guard fits else {
                    await connection.close()
                    continue
                }
            }
            do {
                let result = try await body(connection)
                await connection.close()
                return result
            } catch {
                await connection.close()
                throw error
            }
        }
    }

    /// Reads standby `index`'s state on `connection` and records it; returns whether the standby may serve
    /// the read.
    private func checkStandby(_ index: Int, _ connection: Connection, after: LogPosition?, runtime: Runtime) async throws -> Bool {
        guard let standbys else { return false }
        let row = try await connection.execute(text: Standbys.stateQuery, binds: []).one()
        let inRecovery = try row.decode(0, as: Bool.self)
        let replayed = LogPosition(try row.decode(1, as: String.self))
        let seconds = try row.decode(2, as: Double.self)
        let lag = seconds.isFinite && seconds < 1e9 ? Duration.milliseconds(Int64(max(0, seconds) * 1_000)) : .seconds(1_000_000_000)
        return standbys.router.withLock { router in
            router.checked(index, now: runtime.now, inRecovery: inRecovery, lag: lag, replayed: replayed)
            return router.fits(index, after: after)
        }
    }
}

/// Work whose reads see its own writes, across transactions: writes on the primary, reads on a standby only
/// once it has replayed them (``Engine/readYourWrites()``). Without read routing, both run on the primary.
public final class ReadYourWrites: Sendable {
    let engine: Engine
    /// How far the primary's log went after this scope's last write.
    private let written = Locked<LogPosition?>(nil)

    init(engine: Engine) { self.engine = engine }

    /// A transaction on the primary (``Engine/begin(isolationLevel:readOnly:isolation:_:)``); once it has
    /// committed, later reads of this scope see what it wrote.
    @discardableResult
    public func begin<T>(
        isolationLevel: IsolationLevel? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        try await engine.withConnection { connection in
            let result = try await connection.withTransaction(isolationLevel: isolationLevel, body)
            guard engine.standbys != nil else { return result }
            // How far the log went, the commit included: the insert position (with synchronous_commit off
            // the commit record may not be written out yet, so the write position can be short of it). Without an answer (a cancellation now, a lost
            // connection), this scope's reads go to the primary: the write happened, and is reported.
            let position = try? await connection.execute(text: "SELECT pg_current_wal_insert_lsn()::text", binds: []).scalar(String.self)
            let reached = position.flatMap { LogPosition($0) } ?? LogPosition(UInt64.max)
            written.withLock { $0 = max($0 ?? reached, reached) }
            return result
        }
    }

    /// A read-only transaction (``Engine/read(isolationLevel:isolation:_:)``) that sees this scope's writes:
    /// on a standby that has replayed them, else on the primary.
    @discardableResult
    public func read<T>(
        isolationLevel: IsolationLevel? = nil,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        let after = written.withLock { $0 }
        return try await engine.withReadConnection(after: after) { connection in
            try await connection.withTransaction(isolationLevel: isolationLevel, readOnly: true, body)
        }
    }
}
