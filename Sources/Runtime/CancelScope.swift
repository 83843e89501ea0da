import Synchronization

/// A region of code that can be cancelled as a unit, with an optional deadline (trio's and anyio's cancel
/// scope).
///
/// Create one with ``withCancelScope(deadline:shield:isolation:_:)``, ``moveOnAfter(_:shield:isolation:_:)``
/// or ``failAfter(_:isolation:_:)``. Scopes form a chain through a task-local value; every runtime wait
/// (`Runtime.sleep(for:)`, readiness, ``Event``, locks, channels, `Runtime.checkpoint()` …) consults the
/// chain. Entering and leaving a scope starts no task and arms no timer: a deadline timer is armed the first
/// time something inside the scope has to block, and cancelled when the scope exits.
///
/// Semantics, as in trio:
/// - **Level-triggered.** Once a scope is cancelled, every runtime wait inside it throws
///   `CancellationError` until the scope exits.
/// - **A scope catches only its own cancellation.** It swallows the `CancellationError` that leaves its body
///   when it is itself cancelled and no cancelled enclosing scope (or cancelled task) is visible from it;
///   otherwise the error goes on to the scope that owns it.
/// - **Shield.** A shielded scope hides every enclosing cancellation, Swift task cancellation included,
///   from the runtime waits inside it. Its own ``cancel()`` and deadline still work.
///
/// - Warning: Only runtime waits observe a scope. An await the runtime does not own (`Task.sleep`, another
///   library's continuation) runs on until it finishes, and the next runtime wait throws. To interrupt such
///   an await as well, wrap it in `Runtime.interruptible { }`, which runs it as a task that the scope's
///   cancellation cancels the Swift way.
public final class CancelScope: Sendable {
    @TaskLocal @usableFromInline static var current: CancelScope?

    /// The runtime whose clock this scope's deadline is on.
    public let runtime: Runtime
    /// Whether this scope hides enclosing cancellation from the code inside it.
    public let shield: Bool

    let parent: CancelScope?
    /// Whether this scope or an enclosing one is a shield: then runtime waits ignore Swift cancellation.
    @usableFromInline let isShieldedChain: Bool

    private let cancelFlag = Atomic<Bool>(false)
    private let deadlineNanoseconds: Atomic<Int64>
    private let caughtFlag = Atomic<Bool>(false)

    private struct State: Sendable {
        var wakers: [ObjectIdentifier: any CancellationWaker] = [:]
        var deadlineTimer: (any BackendRegistration)?
        var exited = false
    }
    private let state = Mutex(State())

    init(runtime: Runtime, parent: CancelScope?, deadline: RuntimeInstant, shield: Bool) {
        self.runtime = runtime
        self.parent = parent
        self.shield = shield
        self.isShieldedChain = shield || (parent?.isShieldedChain ?? false)
        self.deadlineNanoseconds = Atomic(deadline.nanoseconds)
    }

    /// Whether ``cancel()`` was called, or the deadline passed, while the scope ran.
    public var cancelCalled: Bool { cancelFlag.load(ordering: .acquiring) }

    /// Whether the scope swallowed its own cancellation when it exited.
    public var cancelledCaught: Bool { caughtFlag.load(ordering: .acquiring) }

    /// The point on ``runtime``'s clock at which the scope cancels itself; ``RuntimeInstant/never`` for none.
    ///
    /// Setting it while the scope runs re-arms the timer of whatever is blocked inside; a deadline in the past
    /// cancels the scope at once.
    public var deadline: RuntimeInstant {
        get { RuntimeInstant(nanoseconds: deadlineNanoseconds.load(ordering: .acquiring)) }
        set { setDeadline(newValue) }
    }

    /// Cancels the scope: every runtime wait inside it, in any task, throws `CancellationError`, now and until
    /// the scope exits. Idempotent; safe from any task or thread, also after the scope exited.
    public func cancel() {
        if cancelFlag.exchange(true, ordering: .acquiringAndReleasing) { return }
        let (wakers, timer) = state.withLock { state in
            defer { state.deadlineTimer = nil }
            return (Array(state.wakers.values), state.deadlineTimer)
        }
        timer?.cancel()
        for waker in wakers { waker.wakeForCancellation() }
    }

    // MARK: Chain queries

    /// Whether this scope itself is cancelled: cancel() was called or its deadline passed.
    private func isSelfCancelled(now: inout Int64?) -> Bool {
        if cancelFlag.load(ordering: .acquiring) { return true }
        let deadline = deadlineNanoseconds.load(ordering: .acquiring)
        if deadline == .max { return false }
        let t = now ?? runtime.backend.now().nanoseconds
        now = t
        if t >= deadline {
            cancel()
            return true
        }
        return false
    }

    /// Whether code running in this scope is cancelled: some scope up to the first shield is, or, past every
    /// scope, the Swift task is.
    func isEffectivelyCancelled() -> Bool {
        var now: Int64?
        var scope: CancelScope? = self
        while let current = scope {
            if current.isSelfCancelled(now: &now) { return true }
            if current.shield { return false }
            scope = current.parent
        }
        return Task.isCancelled
    }

    /// Throws `CancellationError` when code in `scope` (or, with no scope, the task) is cancelled.
    @usableFromInline
    static func checkCancelled(_ scope: CancelScope?) throws(CancellationError) {
        if let scope {
            if scope.isEffectivelyCancelled() { throw CancellationError() }
        } else if Task.isCancelled {
            throw CancellationError()
        }
    }

    // MARK: Wakers

    /// Registers `waker` with this scope and every enclosing one up to the first shield; wakes it at once if
    /// one of them is cancelled already. Arms deadline timers lazily.
    @usableFromInline
    func registerWaker(_ waker: any CancellationWaker) {
        var scope: CancelScope? = self
        var wakeNow = false
        while let current = scope {
            current.state.withLock { state in
                state.wakers[ObjectIdentifier(waker)] = waker
                current.armDeadlineTimerIfNeeded(&state)
            }
            var now: Int64?
            if current.isSelfCancelled(now: &now) { wakeNow = true }
            if current.shield { break }
            scope = current.parent
        }
        if wakeNow { waker.wakeForCancellation() }
    }

    /// Undoes ``registerWaker(_:)``.
    @usableFromInline
    func unregisterWaker(_ waker: any CancellationWaker) {
        let id = ObjectIdentifier(waker)
        var scope: CancelScope? = self
        while let current = scope {
            _ = current.state.withLock { $0.wakers.removeValue(forKey: id) }
            if current.shield { break }
            scope = current.parent
        }
    }

    // MARK: Deadline timer

    private func armDeadlineTimerIfNeeded(_ state: inout State) {
        guard state.deadlineTimer == nil, !state.exited, !cancelFlag.load(ordering: .acquiring) else { return }
        let deadline = RuntimeInstant(nanoseconds: deadlineNanoseconds.load(ordering: .acquiring))
        guard !deadline.isNever else { return }
        state.deadlineTimer = runtime.backend.scheduleTimer(at: deadline) { [weak self] in
            self?.deadlineTimerFired()
        }
    }

    private func deadlineTimerFired() {
        var now: Int64?
        if isSelfCancelled(now: &now) { return }  // cancels (and wakes) when the deadline has passed
        // The deadline moved later since the timer was armed: arm again if anybody still waits.
        let stale = state.withLock { state -> (any BackendRegistration)? in
            let old = state.deadlineTimer
            state.deadlineTimer = nil
            if !state.wakers.isEmpty { armDeadlineTimerIfNeeded(&state) }
            return old
        }
        stale?.cancel()
    }

    private func setDeadline(_ deadline: RuntimeInstant) {
        deadlineNanoseconds.store(deadline.nanoseconds, ordering: .releasing)
        let old = state.withLock { state -> (any BackendRegistration)? in
            let old = state.deadlineTimer
            state.deadlineTimer = nil
            if !state.wakers.isEmpty { armDeadlineTimerIfNeeded(&state) }
            return old
        }
        old?.cancel()
        var now: Int64?
        _ = isSelfCancelled(now: &now)
    }

    // MARK: Running

    /// Whether the `CancellationError` leaving the body is this scope's to swallow (trio's rule).
    private func catchesCancellation() -> Bool {
        var now: Int64?
        guard isSelfCancelled(now: &now) else { return false }
        if shield { return true }
        if let parent { return !parent.isEffectivelyCancelled() }
        return !Task.isCancelled
    }

    private func exit() {
        let timer = state.withLock { state -> (any BackendRegistration)? in
            state.exited = true
            defer { state.deadlineTimer = nil }
            return state.deadlineTimer
        }
        timer?.cancel()
    }

    /// Runs `body` inside a new scope that is a child of the current one.
    static func run<T>(
        runtime: Runtime,
        deadline: RuntimeInstant,
        shield: Bool,
        isolation: isolated (any Actor)?,
        _ body: (CancelScope) async throws -> T
    ) async throws -> T? {
        let scope = CancelScope(runtime: runtime, parent: current, deadline: deadline, shield: shield)
        defer { scope.exit() }
        do {
            return try await $current.withValue(scope, operation: { try await body(scope) }, isolation: isolation)
        } catch let error as CancellationError {
            if scope.catchesCancellation() {
                scope.caughtFlag.store(true, ordering: .releasing)
                return nil
            }
            throw error
        }
    }
}

// MARK: - Entry points

/// Runs `body` in a new cancel scope; returns its value, or `nil` when the scope caught its own cancellation.
///
/// ```swift
/// let value = try await withCancelScope(deadline: deadline) { scope in
///     try await fetch()       // scope.cancel() from anywhere, or the deadline, ends this early
/// }
/// ```
///
/// - Parameters:
///   - deadline: when the scope cancels itself, on the current runtime's clock.
///   - shield: hide enclosing cancellation from the runtime waits inside.
///   - isolation: the caller's isolation, which the body inherits (leave the default).
///   - body: the code to run; it receives the scope, which it may hand to other tasks to cancel it.
/// - Throws: whatever `body` throws, except the scope's own cancellation;
///   ``RuntimeError/Code/noRuntime`` outside a runtime.
public func withCancelScope<T>(
    deadline: RuntimeInstant = .never,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T? {
    try await CancelScope.run(
        runtime: try Runtime.current, deadline: deadline, shield: shield, isolation: isolation, body)
}

/// Runs `body` for at most `duration`; returns `nil` when the time ran out (anyio's `move_on_after`).
public func moveOnAfter<T>(
    _ duration: Duration,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T? {
    let runtime = try Runtime.current
    return try await CancelScope.run(
        runtime: runtime, deadline: runtime.now.advanced(by: duration), shield: shield, isolation: isolation,
        body)
}

/// Runs `body` until `deadline` at the latest; returns `nil` when it was reached (anyio's `move_on_after`
/// with an absolute deadline).
public func moveOn<T>(
    at deadline: RuntimeInstant,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T? {
    try await CancelScope.run(
        runtime: try Runtime.current, deadline: deadline, shield: shield, isolation: isolation, body)
}

/// Runs `body` for at most `duration`, else throws ``TimeoutError`` (anyio's `fail_after`).
///
/// - Throws: ``TimeoutError`` when the time ran out; whatever `body` throws.
public func failAfter<T>(
    _ duration: Duration,
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> T
) async throws -> T {
    let runtime = try Runtime.current
    return try await fail(at: runtime.now.advanced(by: duration), isolation: isolation, body)
}

/// Runs `body` until `deadline` at the latest, else throws ``TimeoutError``.
public func fail<T>(
    at deadline: RuntimeInstant,
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> T
) async throws -> T {
    let result = try await CancelScope.run(
        runtime: try Runtime.current, deadline: deadline, shield: false, isolation: isolation
    ) { _ in try await body() }
    // The body cannot reach the scope, so only the deadline can have cancelled it.
    guard let result else { throw TimeoutError(deadline: deadline) }
    return result
}
