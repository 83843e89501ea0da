import Runtime
import Synchronization

/// How an ``Engine`` pools its connections.
public struct PoolConfiguration: Sendable {
    /// Connections kept open when idle (default 5).
    public var size = 5
    /// Extra connections opened under load and closed when they come back (default 10).
    public var overflow = 10
    /// How long `connect()` waits for a connection before ``SQLError/Kind/poolTimeout`` (default 30 s).
    public var checkoutTimeout: Duration = .seconds(30)
    /// Check an idle connection with a trivial query before handing it out (default off).
    public var prePing = false
    /// Close connections older than this instead of reusing them (default: never).
    public var recycle: Duration?
    /// How long opening a connection may take before ``SQLError/Kind/timeout``. A PostgreSQL connect — name
    /// resolution and every host included — takes at most the URL's `connect_timeout`, else this, else 10 s
    /// (libpq itself would wait forever); when both this and `connect_timeout` are set, the shorter one ends
    /// it. It also bounds the check of an idle connection (``prePing``). The checkout timeout covers only the
    /// wait for a free connection.
    public var connectTimeout: Duration?
    /// How long a call may keep waiting beyond its caller's deadline (a timeout, ``statementTimeout``, any
    /// enclosing cancel scope's deadline) for the server to answer the cancel request, before the connection
    /// is given up, out of the caller's way (default 1 s). A statement the server had received whole is
    /// then reported as ``SQLError/Kind/statementInDoubt`` (a COMMIT as ``SQLError/Kind/commitInDoubt``). A
    /// healthy server answers in milliseconds, so this bounds what a server that stopped answering costs the
    /// caller. A cancellation with no deadline near (`cancel()`), and the clean-up after a stream left early,
    /// wait up to 5 s.
    public var cancellationGrace: Duration = .seconds(1)
    /// How long one call (`execute`, `executeMany`, `executeScript`, `copyIn`, `copyOut`) may run before it
    /// is cancelled — on the server too — and fails with ``SQLError/Kind/timeout`` (default: no limit). A call
    /// the server finished anyway returns its result, as with any cancellation. A COPY's time includes the
    /// caller's closure. A stream is not bounded by it (its rows arrive as the caller reads them): bound it
    /// with a cancel scope (`failAfter`).
    public var statementTimeout: Duration?
    /// How PostgreSQL statements are prepared (default ``PreparedStatements/automatic``): by name, once per
    /// connection, unless a connection pooler sits between the driver and the server.
    public var preparedStatements = PreparedStatements.automatic

    public init() {}

    /// The first setting that cannot work, said as a ``SQLError/Kind/misuse`` (an engine checks its
    /// configuration when made from a URL string and before its first connection): a pool of no connections,
    /// negative overflow, and negative or zero durations are refused rather than quietly changed.
    public func validate() throws(SQLError) {
        func refuse(_ message: String) -> SQLError { SQLError(.misuse, "PoolConfiguration: \(message)") }
        guard size >= 1 else { throw refuse("size must be at least 1, not \(size)") }
        guard overflow >= 0 else { throw refuse("overflow must be 0 or more, not \(overflow)") }
        guard overflow <= Int.max - size else { throw refuse("size + overflow must fit in an Int (\(size) + \(overflow) does not)") }
        guard checkoutTimeout >= .zero else { throw refuse("checkoutTimeout must be 0 or more, not \(checkoutTimeout)") }
        guard cancellationGrace >= .zero else { throw refuse("cancellationGrace must be 0 or more, not \(cancellationGrace)") }
        for (name, value) in [("connectTimeout", connectTimeout), ("statementTimeout", statementTimeout), ("recycle", recycle)] {
            if let value, value <= .zero { throw refuse("\(name) must be more than 0 (or nil for none), not \(value)") }
        }
    }
}

/// A pool of driver connections on one runtime, driven by ``PoolStateMachine``.
final class ConnectionPool: Sendable {
    /// A driver connection and when it was opened.
    struct Pooled: Sendable {
        let driver: any DatabaseDriver
        let openedAt: RuntimeInstantNanos
    }

    /// What a waiting task receives.
    enum Handoff: Sendable {
        /// `mustCheck`: it was idle when the server went away; check it before use.
        case connection(Pooled, mustCheck: Bool)
        /// A slot: open a connection yourself.
        case openSlot
        /// Close this stale connection, then try again.
        case closeAndRetry(any DatabaseDriver)
    }

    private struct State: ~Copyable {
        var machine: PoolStateMachine<Pooled, UInt64>
        var waiting: [UInt64: Completion<Handoff>] = [:]
        /// ``close(timeout:)`` calls waiting for every connection to be closed.
        var drainWaiters: [Completion<Void>] = []
        /// When each connection in use was handed out: a checkout timeout says how long they have been held.
        var lentAt: [ObjectIdentifier: RuntimeInstantNanos] = [:]
        /// Connects that failed since the last one that worked, and the last failure's time and message.
        var connectFailures = 0
        var lastConnectFailure: (at: RuntimeInstantNanos, message: String)?

        /// The drain waiters to resume, when the pool is disposed and every connection closed.
        mutating func takeDrainWaitersIfDrained() -> [Completion<Void>] {
            guard machine.isDrained, !drainWaiters.isEmpty else { return [] }
            defer { drainWaiters = [] }
            return drainWaiters
        }
    }

    private let state: Locked<State>
    private let nextWaiter = Atomic<UInt64>(0)
    let configuration: PoolConfiguration
    private let openConnection: @Sendable () async throws -> any DatabaseDriver
    let runtime: Runtime
    /// What observes the pool, if anything (the engine's).
    let instrumentation: (any SQLInstrumentation)?
    let system: SQLDatabaseSystem
    /// The database name or file, for observers.
    let namespace: String?
    /// This pool's number among all engines' pools, for observers.
    let poolID: Int

    init(
        runtime: Runtime, configuration: PoolConfiguration, instrumentation: (any SQLInstrumentation)? = nil,
        poolID: Int = 0, system: SQLDatabaseSystem = .sqlite, namespace: String? = nil,
        open: @escaping @Sendable () async throws -> any DatabaseDriver
    ) {
        self.runtime = runtime
        self.configuration = configuration
        self.instrumentation = instrumentation
        self.system = system
        self.namespace = namespace
        self.poolID = poolID
        self.openConnection = open
        state = Locked(State(machine: PoolStateMachine(
            size: configuration.size, overflow: configuration.overflow,
            maxAge: configuration.recycle.map(\.saturatingNanoseconds))))
    }

    private var now: RuntimeInstantNanos { runtime.now.nanoseconds }

    // MARK: Checkout

    /// A connection for the calling task.
    ///
    /// - Parameter timeout: how long to wait for a free connection; the configuration's checkout timeout when
    ///   `nil`.
    /// - Throws: ``SQLError/Kind/poolTimeout`` after the checkout timeout; the open error; `CancellationError`.
    func checkout(timeout: Duration? = nil) async throws -> Pooled {
        guard let instrumentation else { return try await checkoutConnection(timeout: timeout) }
        let started = now
        do {
            let pooled = try await checkoutConnection(timeout: timeout)
            instrumentation.checkoutEnded(waited: .nanoseconds(now - started), outcome: .success, pool: poolStatistics)
            return pooled
        } catch {
            let outcome: SQLCheckoutOutcome = (error as? SQLError)?.kind == .poolTimeout ? .timeout : .failure
            instrumentation.checkoutEnded(waited: .nanoseconds(now - started), outcome: outcome, pool: poolStatistics)
            throw error
        }
    }

    /// The pool's counts now, for observers.
    var poolStatistics: SQLPoolStatistics {
        state.withLock { state in
            let open = state.machine.open
            let idle = state.machine.idle.count
            return SQLPoolStatistics(poolID: poolID, open: open, inUse: open - idle, idle: idle, waiting: state.machine.waiters.count)
        }
    }

    private func checkoutConnection(timeout: Duration?) async throws -> Pooled {
        let timeout = timeout ?? configuration.checkoutTimeout
        while true {
            switch try await waitForHandoff(timeout: timeout) {
            case .connection(let pooled, let mustCheck):
                if configuration.prePing || mustCheck, !(await ping(pooled)) {
                    await release(pooled, healthy: false)
                    continue
                }
                return pooled
            case .openSlot:
                do {
                    let opened: any DatabaseDriver
                    if let limit = configuration.connectTimeout {
                        opened = try await fail(at: runtime.now.advanced(by: limit)) { try await openConnection() }
                    } else {
                        opened = try await openConnection()
                    }
                    let pooled = Pooled(driver: opened, openedAt: now)
                    state.withLock { state in
                        state.connectFailures = 0
                        state.lentAt[ObjectIdentifier(opened)] = pooled.openedAt
                    }
                    return pooled
                } catch is TimeoutError {
                    passSlot()
                    let error = SQLError(
                        .timeout, "opening a connection took longer than the connect timeout (\(configuration.connectTimeout ?? .zero))")
                    connectFailed(error)
                    throw error
                } catch {
                    passSlot()
                    if !(error is CancellationError) { connectFailed(error) }
                    throw error
                }
            case .closeAndRetry(let stale):
                await stale.close()
                resumeDrainWaiters()
            }
        }
    }

    private func waitForHandoff(timeout: Duration) async throws -> Handoff {
        // A connection to hand out, or a slot to open one, needs no wait: no timed scope, no parking (the
        // usual case, under a pool large enough). Cancelled code still gets none.
        try Runtime.checkCancellation()
        let now = self.now
        // When each connection was handed out (for a timeout's explanation) is noted under the lock that hands
        // it out, here and wherever else one is: opened, handed to a waiter, taken back.
        let immediate = state.withLock { state in
            let action = state.machine.checkoutWithoutWaiting(now: now)
            if case .use(let idle, _)? = action { state.lentAt[ObjectIdentifier(idle.connection.driver)] = now }
            return action
        }
        if let action = immediate {
            switch action {
            case .use(let idle, let mustCheck): return .connection(idle.connection, mustCheck: mustCheck)
            case .open: return .openSlot
            case .fail: throw Self.disposedError
            case .closeAndRetry(let stale): return .closeAndRetry(stale.driver)
            case .wait: break
            }
        }
        let id = nextWaiter.add(1, ordering: .relaxed).newValue
        let deadline = runtime.now.advanced(by: timeout)
        // The checkout timeout is one backend timer that fails this waiter, armed once it waits: cheaper than
        // a cancel scope around the wait, and the same to the caller.
        let timer = Locked<(any BackendRegistration)?>(nil)
        defer { timer.withLock { $0 }?.cancel() }
        do {
            // Resumed by another task giving a connection back (or the timer), not by an outside thread.
            return try await Runtime.withCompletion(onCancel: .abandon, resumedByOutsideThread: false) {
                (completion: Completion<Handoff>) in
                let now = self.now
                let action = state.withLock { state in
                    let action = state.machine.checkout(id, now: now)
                    switch action {
                    case .wait: state.waiting[id] = completion
                    case .use(let idle, _): state.lentAt[ObjectIdentifier(idle.connection.driver)] = now
                    case .open, .fail, .closeAndRetry: break
                    }
                    return action
                }
                switch action {
                case .use(let idle, let mustCheck):
                    completion.resume(returning: .connection(idle.connection, mustCheck: mustCheck))
                case .open: completion.resume(returning: .openSlot)
                case .wait:
                    // Armed outside the pool's lock (the timer's callback takes it).
                    let registration = runtime.backend.scheduleTimer(at: deadline) { [weak self] in self?.expire(id) }
                    timer.withLock { $0 = registration }
                case .fail: completion.resume(throwing: Self.disposedError)
                case .closeAndRetry(let stale): completion.resume(returning: .closeAndRetry(stale.driver))
                }
            }
        } catch {
            // Gave up waiting (timeout or cancellation): leave the queue. A hand-off racing with this sees the
            // abandoned completion refuse it and gives the connection back.
            state.withLock { state in
                state.machine.withdraw(id)
                state.waiting[id] = nil
            }
            if error is CheckoutTimedOut {
                throw SQLError(.poolTimeout, timeoutExplanation(timeout))
            }
            throw error
        }
    }

    /// Why no connection came: how many were in use and for how long, how many callers waited, and whether
    /// connects were failing — what to look at first (a leak, a slow query, a pool too small, a server down).
    private func timeoutExplanation(_ timeout: Duration) -> String {
        let now = self.now
        let (open, idle, waiting, held, failures, lastFailure) = state.withLock { state in
            (state.machine.open, state.machine.idle.count, state.machine.waiters.count,
             state.lentAt.values.map { now - $0 }.sorted(), state.connectFailures, state.lastConnectFailure)
        }
        func seconds(_ nanoseconds: Int64) -> String {
            let tenths = max(0, nanoseconds) / 100_000_000
            return "\(tenths / 10).\(tenths % 10) s"
        }
        var text = "no connection became free within \(timeout) (size \(configuration.size), overflow \(configuration.overflow)): "
            + "\(open - idle) of \(open) open connections in use"
        if let longest = held.last, let shortest = held.first {
            text += held.count == 1 ? " (for \(seconds(longest)))" : " (the longest for \(seconds(longest)), the shortest for \(seconds(shortest)))"
        }
        text += waiting == 0 ? ", no other caller waiting" : ", \(waiting) other caller\(waiting == 1 ? "" : "s") waiting"
        if failures > 0, let lastFailure {
            text += "; the last \(failures == 1 ? "connect" : "\(failures) connects") failed, most recently "
                + "\(seconds(now - lastFailure.at)) ago: \(lastFailure.message)"
        }
        return text
    }

    /// Notes a failed connect for the timeout's explanation and for observers.
    private func connectFailed(_ error: any Error) {
        let message = (error as? SQLError)?.message ?? "\(type(of: error))"
        let now = self.now
        state.withLock { state in
            state.connectFailures += 1
            state.lastConnectFailure = (now, message)
        }
        instrumentation?.connectFailed(error, database: system)
    }

    /// A waiter's checkout timeout passed: it leaves the queue and its wait fails (unless a connection
    /// reached it first).
    private func expire(_ id: UInt64) {
        let completion = state.withLock { state -> Completion<Handoff>? in
            guard let completion = state.waiting.removeValue(forKey: id) else { return nil }
            state.machine.withdraw(id)
            return completion
        }
        completion?.resume(throwing: CheckoutTimedOut())
    }

    private struct CheckoutTimedOut: Error {}

    /// Whether the connection answers a trivial query — within the connect timeout (10 s without one), so
    /// that a server that stopped answering fails the check instead of holding the checkout.
    private func ping(_ pooled: Pooled) async -> Bool {
        let connection = Connection(borrowing: pooled.driver)
        let answered: QueryResult?? = try? await moveOnAfter(configuration.connectTimeout ?? .seconds(10)) { _ in
            try await connection.execute("SELECT 1")
        }
        guard case .some(.some) = answered else { return false }
        return !connection.isBroken
    }

    // MARK: Release

    /// Takes a connection back: hands it to a waiter, keeps it idle, or closes it.
    func release(_ pooled: Pooled, healthy: Bool) async {
        defer { instrumentation?.connectionReturned(pool: poolStatistics) }
        var healthy = healthy
        while true {
            let now = self.now
            let (action, completion) = takeBack(pooled, healthy: healthy, now: now)
            switch action {
            case .keep:
                return
            case .close(let connection):
                await connection.driver.close()
                resumeDrainWaiters()
                return
            case .handTo(_, let idle):
                if completion?.resume(returning: .connection(idle.connection, mustCheck: false)) == true { return }
                // The waiter left: the connection comes back through the machine again, still healthy.
                healthy = true
            case .closeAndOpenFor(_, let connection):
                await connection.driver.close()
                if completion?.resume(returning: .openSlot) != true { passSlot() }
                return
            }
        }
    }

    /// The machine's answer to a connection coming back, with the completion of the waiter it goes to (taken
    /// out of the queue under the same lock).
    private func takeBack(
        _ pooled: Pooled, healthy: Bool, now: RuntimeInstantNanos
    ) -> (PoolStateMachine<Pooled, UInt64>.ReleaseAction, Completion<Handoff>?) {
        state.withLock { state in
            state.lentAt[ObjectIdentifier(pooled.driver)] = nil
            let action = state.machine.release(pooled, openedAt: pooled.openedAt, healthy: healthy, now: now)
            switch action {
            case .handTo(let waiter, let idle):
                // Lent again at once (back through here if that waiter has left).
                state.lentAt[ObjectIdentifier(idle.connection.driver)] = now
                return (action, state.waiting.removeValue(forKey: waiter))
            case .closeAndOpenFor(let waiter, _):
                return (action, state.waiting.removeValue(forKey: waiter))
            case .keep, .close:
                return (action, nil)
            }
        }
    }

    /// An opening slot nobody will use: pass it to the next waiter, or free it.
    private func passSlot() {
        while true {
            let (waiter, completion) = state.withLock { state -> (UInt64?, Completion<Handoff>?) in
                guard let waiter = state.machine.openFailed() else { return (nil, nil) }
                return (waiter, state.waiting.removeValue(forKey: waiter))
            }
            guard waiter != nil else {
                resumeDrainWaiters()
                return
            }
            if completion?.resume(returning: .openSlot) == true { return }
        }
    }

    // MARK: Disposal

    /// Closes the idle connections and fails the waiters; busy connections close when they come back.
    func dispose() async {
        let (connections, waiters) = state.withLock { state -> ([Pooled], [Completion<Handoff>]) in
            let (connections, waiterIDs) = state.machine.dispose()
            let waiters = waiterIDs.compactMap { state.waiting.removeValue(forKey: $0) }
            return (connections, waiters)
        }
        for waiter in waiters { waiter.resume(throwing: Self.disposedError) }
        for connection in connections { await connection.driver.close() }
        resumeDrainWaiters()
    }

    /// Waits until every connection of the disposed pool is closed (those in use close as they come back),
    /// or `deadline`; returns whether all were.
    func waitUntilDrained(deadline: RuntimeInstant) async -> Bool {
        // Resumed by whichever task closes the last connection: one of this pool's runtime, or — when the
        // caller runs on another runtime — from that runtime's thread.
        let outside = (try? Runtime.current).map { $0 !== runtime } ?? true
        let drained: Void?? = try? await withCancelScope(deadline: deadline) { _ in
            try await Runtime.withCompletion(onCancel: .abandon, resumedByOutsideThread: outside) { (completion: Completion<Void>) in
                let done = state.withLock { state -> Bool in
                    if state.machine.isDrained { return true }
                    state.drainWaiters.append(completion)
                    return false
                }
                if done { completion.resume() }
            }
        }
        return (drained ?? nil) != nil
    }

    private func resumeDrainWaiters() {
        for waiter in state.withLock({ $0.takeDrainWaitersIfDrained() }) { waiter.resume() }
    }

    /// A connection whose ``Connection`` was dropped without `close()`: its slot is freed (passed to a
    /// waiter) and the connection closed, at once, from synchronous code.
    func releaseDropped(_ pooled: Pooled) {
        let now = self.now
        let (action, completion) = takeBack(pooled, healthy: false, now: now)
        pooled.driver.closeDropped()
        switch action {
        case .closeAndOpenFor:
            if completion?.resume(returning: .openSlot) != true { passSlot() }
        case .close, .keep, .handTo:
            break  // an unhealthy connection is never kept or handed on
        }
        resumeDrainWaiters()
    }

    /// The server went away: idle connections are checked before their next use.
    func invalidate() { state.withLock { $0.machine.invalidate() } }

    /// Open connections, idle ones and waiting tasks, for tests and diagnostics.
    var statistics: (open: Int, idle: Int, waiting: Int) {
        state.withLock { ($0.machine.open, $0.machine.idle.count, $0.machine.waiters.count) }
    }

    static var disposedError: SQLError { SQLError(.misuse, "the engine was disposed; create a new one") }
}
