import DequeModule

/// The connection pool's bookkeeping as a pure state machine: events in, actions out, no IO and no locks.
/// ``ConnectionPool`` owns one under a mutex and performs the actions after unlocking.
///
/// `Connection` is generic so that the machine is tested with plain values.
struct PoolStateMachine<Connection, Waiter: Hashable> {
    struct Idle {
        let connection: Connection
        let openedAt: RuntimeInstantNanos
        var lastUsed: RuntimeInstantNanos
        /// The pool's generation when the connection came back: one from before the last
        /// ``invalidate()`` is checked before it is used.
        var generation = 0
    }

    let size: Int
    let overflow: Int
    let maxAge: Int64?  // nanoseconds; nil: never recycle

    private(set) var idle: [Idle] = []  // LIFO: the warmest connection first
    private(set) var open = 0  // connections open or being opened
    private(set) var waiters = Deque<Waiter>()
    private(set) var disposed = false
    /// Raised by ``invalidate()``: the server went away, so connections idle since may be dead.
    private(set) var generation = 0

    init(size: Int, overflow: Int, maxAge: Int64?) {
        self.size = max(1, size)
        self.overflow = max(0, overflow)
        self.maxAge = maxAge
    }

    enum CheckoutAction {
        /// Use this idle connection. `mustCheck`: it was idle when the server went away (``invalidate()``):
        /// check it with a trivial query first (as always with pre-ping).
        case use(Idle, mustCheck: Bool)
        /// Open a new connection (the slot is reserved).
        case open
        /// Wait: every connection is busy and the limit is reached.
        case wait
        /// The pool is disposed.
        case fail
        /// Close this stale connection, then check out again.
        case closeAndRetry(Connection)
    }

    /// A task asks for a connection.
    mutating func checkout(_ waiter: Waiter, now: RuntimeInstantNanos) -> CheckoutAction {
        checkout(Optional(waiter), now: now)
    }

    private mutating func checkout(_ waiter: Waiter?, now: RuntimeInstantNanos) -> CheckoutAction {
        if disposed { return .fail }
        if let entry = idle.popLast() {
            if let maxAge, now - entry.openedAt >= maxAge {
                open -= 1
                return .closeAndRetry(entry.connection)
            }
            return .use(entry, mustCheck: entry.generation < generation)
        }
        if open < size + overflow {
            open += 1
            return .open
        }
        guard let waiter else { return .wait }  // (not reached: checkoutWithoutWaiting checked)
        waiters.append(waiter)
        return .wait
    }

    /// ``checkout(_:now:)`` when it need not wait; nil (and nothing changed) when it would.
    mutating func checkoutWithoutWaiting(now: RuntimeInstantNanos) -> CheckoutAction? {
        if !disposed, idle.isEmpty, open >= size + overflow { return nil }
        return checkout(nil, now: now)
    }

    /// A waiter stopped waiting (timeout or cancellation) before it was served.
    mutating func withdraw(_ waiter: Waiter) {
        if let index = waiters.firstIndex(of: waiter) { waiters.remove(at: index) }
    }

    enum ReleaseAction {
        /// Hand the connection to this waiter; if it no longer waits, call ``release(_:openedAt:healthy:now:)``
        /// again.
        case handTo(Waiter, Idle)
        /// Kept idle.
        case keep
        /// Close it (broken, too old, beyond the pool's size, or the pool is disposed).
        case close(Connection)
        /// Close it, and open a replacement for this waiter (its slot is reserved).
        case closeAndOpenFor(Waiter, Connection)
    }

    /// A connection comes back.
    mutating func release(
        _ connection: Connection, openedAt: RuntimeInstantNanos, healthy: Bool, now: RuntimeInstantNanos
    ) -> ReleaseAction {
        let tooOld = maxAge.map { now - openedAt >= $0 } ?? false
        if disposed || !healthy || tooOld {
            if !disposed, let waiter = waiters.popFirst() { return .closeAndOpenFor(waiter, connection) }
            open -= 1
            return .close(connection)
        }
        let entry = Idle(connection: connection, openedAt: openedAt, lastUsed: now, generation: generation)
        if let waiter = waiters.popFirst() { return .handTo(waiter, entry) }
        if open > size {
            open -= 1  // overflow connections are closed when they come back
            return .close(connection)
        }
        idle.append(entry)
        return .keep
    }

    /// A connection failed in a way that means the server went away (a restart, a failover): every
    /// connection idle now is checked before its next use (SQLAlchemy invalidates the whole pool).
    mutating func invalidate() { generation += 1 }

    /// Whether the pool is disposed and every connection it opened is closed.
    var isDrained: Bool { disposed && open == 0 }

    /// Opening a connection failed: its slot is free again; a waiter may try in its place.
    mutating func openFailed() -> Waiter? {
        if let waiter = waiters.popFirst() { return waiter }  // the slot passes to it
        open -= 1
        return nil
    }

    /// Closes the pool: returns the idle connections to close and the waiters to fail.
    mutating func dispose() -> (close: [Connection], fail: [Waiter]) {
        disposed = true
        let connections = idle.map(\.connection)
        open -= idle.count
        idle = []
        let failed = Array(waiters)
        waiters = []
        return (connections, failed)
    }
}

/// Nanoseconds on the runtime's clock (kept as a plain integer in the state machine).
typealias RuntimeInstantNanos = Int64
