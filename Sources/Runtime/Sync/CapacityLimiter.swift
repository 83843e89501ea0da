import DequeModule
import Synchronization

/// Bounds how many borrowers use a resource at once (trio's and anyio's `CapacityLimiter`).
///
/// Each token is lent to a *borrower*: by default the calling task, or any value given to
/// ``acquire(onBehalfOf:)``. A borrower holds at most one token; borrowing twice is an error, and so is
/// giving back a token that was not lent. Unlike a ``Semaphore``, the number of tokens can change while
/// they are lent. Waiters are served in order; a returned token goes straight to the first waiter.
///
/// Every ``Runtime`` has a default limiter of 40 tokens bounding `Runtime.runBlocking(limiter:onCancel:_:)`.
public final class CapacityLimiter: Sendable {
    /// Who holds a token: a task, or a value that stands for the work (a request, a job).
    public struct Borrower: Sendable, Hashable, CustomStringConvertible {
        private enum Kind: Sendable {
            case task(TaskIdentity)
            case value(any Hashable & Sendable)
        }
        private let kind: Kind

        /// The borrower `value` (compared with `==`).
        public init(_ value: some Hashable & Sendable) { kind = .value(value) }

        /// The task `task`.
        public static func task(_ task: TaskIdentity) -> Borrower { Borrower(kind: .task(task)) }

        private init(kind: Kind) { self.kind = kind }

        /// The calling task, or a borrower of its own for code outside any task.
        static var currentTask: Borrower {
            if let task = TaskIdentity.current { return .task(task) }
            return Borrower(kind: .value(OutsideTask()))
        }

        private struct OutsideTask: Hashable, Sendable {}

        private var key: AnyHashable {
            switch kind {
            case .task(let task): AnyHashable(task)
            case .value(let value): AnyHashable(value)
            }
        }

        public static func == (lhs: Borrower, rhs: Borrower) -> Bool { lhs.key == rhs.key }
        public func hash(into hasher: inout Hasher) { hasher.combine(key) }
        public var description: String {
            switch kind {
            case .task(let task): task.description
            case .value(let value): String(describing: value)
            }
        }
    }

    private struct Waiter: Sendable {
        let parker: Parker<Void>
        let borrower: Borrower
    }
    private struct State: Sendable {
        var total: Int
        var borrowers: Set<Borrower> = []
        var waiters = Deque<Waiter>()

        /// Lends tokens to waiters, first come first served, while there are tokens to lend.
        mutating func serveWaiters() {
            while borrowers.count < total, let waiter = waiters.popFirst() {
                if waiter.parker.resume(.success(())) { borrowers.insert(waiter.borrower) }
            }
        }
    }
    private let state: Locked<State>

    /// - Parameter totalTokens: how many borrowers at once (≥ 0; 0 lends nothing until it is raised;
    ///   `Int.max` for no bound).
    /// - Throws: ``RuntimeError/Code/invalidArgument`` when `totalTokens` is negative.
    public init(totalTokens: Int) throws(RuntimeError) {
        try Self.validate(totalTokens)
        state = Locked(State(total: totalTokens))
    }

    private static func validate(_ totalTokens: Int) throws(RuntimeError) {
        guard totalTokens >= 0 else {
            throw RuntimeError(.invalidArgument, "CapacityLimiter: totalTokens must be >= 0, got \(totalTokens)")
        }
    }

    /// The number of tokens. Change it with ``setTotalTokens(_:)``.
    public var totalTokens: Int { state.withLock { $0.total } }

    /// Changes the number of tokens: raising it lends the new tokens to waiters at once; lowering it takes
    /// effect as tokens come back (borrowers keep theirs).
    ///
    /// - Throws: ``RuntimeError/Code/invalidArgument`` when `totalTokens` is negative (the total is unchanged).
    public func setTotalTokens(_ totalTokens: Int) throws(RuntimeError) {
        try Self.validate(totalTokens)
        state.withLock { state in
            state.total = totalTokens
            state.serveWaiters()
        }
    }

    /// Tokens currently lent.
    public var borrowedTokens: Int { state.withLock { $0.borrowers.count } }

    /// Tokens free right now.
    public var availableTokens: Int { state.withLock { max(0, $0.total - $0.borrowers.count) } }

    /// A snapshot of the limiter (trio's `CapacityLimiterStatistics`).
    public struct Statistics: Sendable, Hashable {
        /// Tokens currently lent.
        public var borrowedTokens: Int
        /// The number of tokens.
        public var totalTokens: Int
        /// Who holds them, in no particular order.
        public var borrowers: [Borrower]
        /// Borrowers blocked in an `acquire`.
        public var tasksWaiting: Int
    }

    /// What the limiter holds right now.
    public func statistics() -> Statistics {
        state.withLock {
            Statistics(
                borrowedTokens: $0.borrowers.count, totalTokens: $0.total, borrowers: Array($0.borrowers),
                tasksWaiting: $0.waiters.count)
        }
    }

    /// Waits for a token and lends it to the calling task. A checkpoint, also when a token is free.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when the task holds a token of this limiter;
    ///   `CancellationError` (then no token is held).
    public func acquire() async throws {
        try await acquire(onBehalfOf: .currentTask)
    }

    /// Waits for a token and lends it to `borrower`. A checkpoint, also when a token is free.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when `borrower` holds a token of this limiter;
    ///   `CancellationError` (then no token is held).
    public func acquire(onBehalfOf borrower: Borrower) async throws {
        if try await acquireWithoutYield(onBehalfOf: borrower) { await Task.yield() }
    }

    /// The acquire path without the schedule point, for `runBlocking`, which suspends right after anyway.
    /// Returns whether the token was free (no wait).
    @discardableResult
    func acquireWithoutYield(onBehalfOf borrower: Borrower) async throws -> Bool {
        try CancelScope.checkCancelled(CancelScope.current)
        if try tryAcquire(onBehalfOf: borrower) { return true }
        let parker = Parker<Void>()
        do {
            try await Runtime.park(parker) {
                let lent = try state.withLock { state throws(RuntimeError) -> Bool in
                    if try Self.lend(&state, to: borrower) { return true }
                    state.waiters.append(Waiter(parker: parker, borrower: borrower))
                    return false
                }
                if lent { parker.resume(returning: ()) }
            }
        } catch {
            // A hand-off and a cancellation cannot both win: the parker resumes once.
            state.withLock { state in
                if let index = state.waiters.firstIndex(where: { $0.parker === parker }) {
                    state.waiters.remove(at: index)
                }
            }
            throw error
        }
        return false
    }

    /// Lends a token to the calling task if one is free; returns whether it did.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when the task holds a token of this limiter.
    public func tryAcquire() throws(RuntimeError) -> Bool { try tryAcquire(onBehalfOf: .currentTask) }

    /// Lends a token to `borrower` if one is free; returns whether it did.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyHeld`` when `borrower` holds a token of this limiter.
    public func tryAcquire(onBehalfOf borrower: Borrower) throws(RuntimeError) -> Bool {
        try state.withLock { state throws(RuntimeError) in try Self.lend(&state, to: borrower) }
    }

    private static func lend(_ state: inout State, to borrower: Borrower) throws(RuntimeError) -> Bool {
        if state.borrowers.contains(borrower) {
            throw RuntimeError(.alreadyHeld, "CapacityLimiter: \(borrower) already holds one of this limiter's tokens")
        }
        // Waiters first: a free token with waiters queued is theirs (a hand-off in flight).
        guard state.waiters.isEmpty, state.borrowers.count < state.total else { return false }
        state.borrowers.insert(borrower)
        return true
    }

    /// Gives back the calling task's token.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when the task holds no token of this limiter.
    public func release() throws(RuntimeError) { try release(onBehalfOf: .currentTask) }

    /// Gives back `borrower`'s token.
    ///
    /// - Throws: ``RuntimeError/Code/notHeld`` when `borrower` holds no token of this limiter.
    public func release(onBehalfOf borrower: Borrower) throws(RuntimeError) {
        try state.withLock { state throws(RuntimeError) in
            guard state.borrowers.remove(borrower) != nil else {
                throw RuntimeError(.notHeld, "CapacityLimiter: \(borrower) holds none of this limiter's tokens")
            }
            state.serveWaiters()
        }
    }

    /// Runs `body` while the calling task holds a token.
    public func withToken<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T)
        async throws -> T
    {
        let borrower = Borrower.currentTask
        try await acquire(onBehalfOf: borrower)
        defer { try? release(onBehalfOf: borrower) }
        return try await body()
    }
}
