import Synchronization

/// A region of code that can be cancelled as a unit, with an optional deadline and shield (trio's and
/// anyio's cancel scope).
///
/// Run code in a new scope with ``withCancelScope(deadline:shield:isolation:_:)``,
/// ``moveOnAfter(_:shield:isolation:_:)`` or `failAfter(_:shield:_:)`, or make a scope first
/// and enter it later, exactly once, with ``enter(isolation:_:)`` — to hand it to another task before the
/// code it guards starts, say:
///
/// ```swift
/// let scope = try CancelScope(timeout: .seconds(5))      // the deadline is set when it is entered
/// try group.startSoon { await watchdog(cancelling: scope) }
/// let reply = try await scope.enter { _ in try await request() }
/// ```
///
/// Scopes form a chain through a task-local value; every runtime wait (`Runtime.sleep(for:)`, readiness,
/// ``Event``, locks, channels, `Runtime.checkpoint()` …) consults the chain. Entering and leaving a scope
/// starts no task and arms no timer: a deadline timer is armed the first time something inside the scope
/// has to block, and cancelled when the scope exits.
///
/// Semantics, as in trio:
/// - **Level-triggered.** Once a scope is cancelled, every runtime wait inside it throws
///   `CancellationError` until the scope exits. A scope never becomes un-cancelled.
/// - **A scope catches only its own cancellation.** It swallows the `CancellationError` that leaves its body
///   when it is itself cancelled and no cancelled enclosing scope (or cancelled task) is visible from it;
///   otherwise the error goes on to the scope that owns it. An ``ErrorGroup`` leaving a scope that catches
///   loses its cancellations: what remains is rethrown, and nothing when nothing remains.
/// - **Shield.** A shielded scope hides every enclosing cancellation, Swift task cancellation included,
///   from the runtime waits inside it. Its own ``cancel()`` and deadline still work. ``shield`` and
///   ``deadline`` may change while the scope runs; a change that cancels a blocked wait wakes it at once.
///
/// - Warning: Only runtime waits observe a scope. An await the runtime does not own (`Task.sleep`, another
///   library's continuation) runs on until it finishes, and the next runtime wait throws. To interrupt such
///   an await as well, wrap it in `Runtime.interruptible { }`, which runs it as a task that the scope's
///   cancellation cancels the Swift way.
public final class CancelScope: Sendable {
    @TaskLocal @usableFromInline static var current: CancelScope?

    // Bound once, by `bind` at entry, before the scope becomes reachable from any task-local chain; and
    // published by the release-store of `phase` (`Phase.entered`). Code reads them only after an
    // acquiring load of `phase` saw the scope entered, or from inside the scope (a task whose chain holds
    // the scope, which it reached through `bind`'s `withValue`, so after the writes).
    // `nonisolated(unsafe)`: written exactly once, before publication, and never again.
    nonisolated(unsafe) private var boundRuntime: Runtime?
    nonisolated(unsafe) private(set) var parent: CancelScope?
    /// `boundRuntime`'s blocked-task accounting, kept beside it so that a wait reads one reference.
    nonisolated(unsafe) private var boundAccounting: TaskAccounting?

    private enum Phase {
        static let unentered: UInt8 = 0
        static let entered: UInt8 = 1
    }
    private let phase: Atomic<UInt8>
    private let entryClaimed: Atomic<Bool>

    private let cancelFlag = Atomic<Bool>(false)
    private let shieldFlag: Atomic<Bool>
    private let deadlineNanoseconds: Atomic<Int64>
    /// A relative timeout still to be turned into a deadline at entry (`Int64.min`: none).
    private let pendingTimeoutNanoseconds: Atomic<Int64>
    private let caughtFlag = Atomic<Bool>(false)

    /// A wait registered with this scope: the waker, and the innermost scope the wait runs in (this one or
    /// one inside it), whose chain decides whether a cancellation here reaches the wait.
    struct Registration: Sendable {
        let waker: any CancellationWaker
        /// Not retained: a registration lives only while its wait is parked inside `innermost` (the wait
        /// unregisters before it returns), and the waiting task keeps the scope alive until then. Read it
        /// only under the lock of a scope that holds the registration (``parkedWaits(_:)``): once that lock
        /// is released, the wait may return, leave the scope, and free it.
        unowned(unsafe) let innermost: CancelScope
    }

    private struct State: Sendable {
        var registrations: [ObjectIdentifier: Registration] = [:]
        /// The armed (or being armed) deadline timer, for `timerDeadline`.
        var deadlineTimer: (any BackendRegistration)?
        var timerDeadline: Int64?
        /// Bumped whenever the timer slot is reset, so that a timer armed outside the lock can tell that it
        /// is stale.
        var timerGeneration = 0
        var exited = false
    }
    private let state = Locked(State())

    /// Makes a scope to enter later with ``enter(isolation:_:)``; cancelling it or changing it before then
    /// takes effect when it is entered.
    ///
    /// - Parameters:
    ///   - deadline: when the scope cancels itself, on the clock of the runtime it is entered in.
    ///   - shield: hide enclosing cancellation from the runtime waits inside.
    public init(deadline: RuntimeInstant = .never, shield: Bool = false) {
        self.phase = Atomic(Phase.unentered)
        self.entryClaimed = Atomic(false)
        self.shieldFlag = Atomic(shield)
        self.deadlineNanoseconds = Atomic(deadline.nanoseconds)
        self.pendingTimeoutNanoseconds = Atomic(.min)
    }

    /// Makes a scope whose deadline is `timeout` after the moment it is entered (trio's relative deadline).
    ///
    /// - Throws: ``RuntimeError/Code/invalidArgument`` when `timeout` is negative.
    public init(timeout: Duration, shield: Bool = false) throws(RuntimeError) {
        try Self.validate(timeout, "CancelScope(timeout:)", "timeout")
        self.phase = Atomic(Phase.unentered)
        self.entryClaimed = Atomic(false)
        self.shieldFlag = Atomic(shield)
        self.deadlineNanoseconds = Atomic(RuntimeInstant.never.nanoseconds)
        self.pendingTimeoutNanoseconds = Atomic(timeout.saturatingNanoseconds)
    }

    /// A scope entered at once (the `withCancelScope` family): bound here, before any task can see it, so
    /// with plain stores rather than `bind`'s atomic read-modify-writes.
    init(runtime: Runtime, parent: CancelScope?, deadline: RuntimeInstant, shield: Bool) {
        self.phase = Atomic(Phase.entered)
        self.entryClaimed = Atomic(true)
        self.shieldFlag = Atomic(shield)
        self.deadlineNanoseconds = Atomic(deadline.nanoseconds)
        self.pendingTimeoutNanoseconds = Atomic(.min)
        self.boundRuntime = runtime
        self.boundAccounting = runtime.accounting
        self.parent = parent
    }

    /// The blocked-task accounting of the runtime the scope was entered in.
    @usableFromInline var accounting: TaskAccounting? { boundAccounting }

    /// The runtime whose clock the deadline is on; `nil` until the scope is entered.
    public var runtime: Runtime? { isEntered ? boundRuntime : nil }

    /// Whether the scope has been entered (it may have exited since).
    public var isEntered: Bool { phase.load(ordering: .acquiring) == Phase.entered }

    /// Whether ``cancel()`` was called, or the deadline passed.
    public var cancelCalled: Bool {
        if cancelFlag.load(ordering: .acquiring) { return true }
        var now: Int64?
        return isEntered && isSelfCancelled(now: &now)
    }

    /// Whether the scope swallowed its own cancellation when it exited.
    public var cancelledCaught: Bool { caughtFlag.load(ordering: .acquiring) }

    /// Whether this scope hides enclosing cancellation, Swift task cancellation included, from the code
    /// inside it.
    ///
    /// May change at any time. Turning it off wakes every wait inside that an enclosing cancellation now
    /// reaches; turning it on protects the waits that follow (also while a cancellation is propagating, for
    /// clean-up in a `catch`).
    public var shield: Bool {
        get { shieldFlag.load(ordering: .sequentiallyConsistent) }
        set {
            // Sequentially consistent, like the note Swift task cancellation leaves on a wait: either the
            // cancellation handler sees the shield off, or this setter sees the note.
            let old = shieldFlag.exchange(newValue, ordering: .sequentiallyConsistent)
            if old && !newValue && isEntered { wakeWaitsNowCancelled() }
        }
    }

    /// The point on ``runtime``'s clock at which the scope cancels itself; ``RuntimeInstant/never`` for none.
    ///
    /// Setting it while the scope runs re-arms the timer of whatever is blocked inside; a deadline in the past
    /// cancels the scope at once. A scope made with ``init(timeout:shield:)`` reads `never` until it is
    /// entered; setting a deadline before that replaces the timeout.
    public var deadline: RuntimeInstant {
        get { RuntimeInstant(nanoseconds: deadlineNanoseconds.load(ordering: .acquiring)) }
        set { setDeadline(newValue) }
    }

    /// Cancels the scope: every runtime wait inside it, in any task, throws `CancellationError`, now and until
    /// the scope exits. Idempotent; safe from any task or thread, before the scope is entered (it is then
    /// entered cancelled) and after it exited (then it changes nothing but ``cancelCalled``).
    public func cancel() {
        if cancelFlag.exchange(true, ordering: .acquiringAndReleasing) { return }
        let (registrations, timer) = state.withLock { state in
            defer {
                state.deadlineTimer = nil
                state.timerDeadline = nil
                state.timerGeneration &+= 1
            }
            return (Self.parkedWaits(state), state.deadlineTimer)
        }
        timer?.cancel()
        for (waker, innermost) in registrations where innermost.isCancelled(forWaitSeenTaskCancellation:
            waker.hasSeenTaskCancellation)
        {
            waker.wakeForCancellation()
        }
    }

    /// The waits registered in `state`, each with a strong reference to the scope it is parked in, taken
    /// under the lock: while its registration is there the wait has not returned, so the scope is alive; past
    /// the lock it may have (a deadline timer firing on another thread as the wait ends and its scope exits).
    private static func parkedWaits(_ state: State) -> [(waker: any CancellationWaker, innermost: CancelScope)] {
        state.registrations.values.map { ($0.waker, $0.innermost) }
    }

    static func validate(_ duration: Duration, _ api: String, _ argument: String) throws(RuntimeError) {
        guard duration >= .zero else {
            throw RuntimeError(.invalidArgument, "\(api): \(argument) must be >= 0, got \(duration)")
        }
    }

    // MARK: Entering

    private func bind(runtime: Runtime, parent: CancelScope?) {
        boundRuntime = runtime
        boundAccounting = runtime.accounting
        self.parent = parent
        let timeout = pendingTimeoutNanoseconds.exchange(.min, ordering: .acquiringAndReleasing)
        if timeout != .min {
            let deadline = runtime.now.advanced(by: .nanoseconds(timeout))
            // A deadline set meanwhile (after the timeout was taken) wins, as the later word.
            _ = deadlineNanoseconds.compareExchange(
                expected: RuntimeInstant.never.nanoseconds, desired: deadline.nanoseconds,
                ordering: .acquiringAndReleasing)
        }
        phase.store(Phase.entered, ordering: .releasing)
    }

    /// Runs `body` inside this scope, as a child of the caller's current scope; returns its value, or `nil`
    /// when the scope caught its own cancellation.
    ///
    /// - Throws: ``RuntimeError/Code/alreadyEntered`` when the scope was entered before (a scope is entered
    ///   once, as in trio); ``RuntimeError/Code/noRuntime`` outside a runtime; whatever `body` throws, except
    ///   the scope's own cancellation.
    public func enter<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (CancelScope) async throws -> T
    ) async throws -> T? {
        let runtime = try Runtime.current
        if entryClaimed.exchange(true, ordering: .acquiringAndReleasing) {
            throw RuntimeError(.alreadyEntered, "a CancelScope can be entered only once; this one was entered before")
        }
        bind(runtime: runtime, parent: CancelScope.current)
        return try await runEntered(isolation: isolation, body)
    }

    // MARK: Chain queries

    /// Whether this scope itself is cancelled: cancel() was called or its deadline passed. Entered scopes only.
    private func isSelfCancelled(now: inout Int64?) -> Bool {
        if cancelFlag.load(ordering: .acquiring) { return true }
        let deadline = deadlineNanoseconds.load(ordering: .acquiring)
        if deadline == .max { return false }
        guard let runtime = boundRuntime else { return false }
        let t = now ?? runtime.backend.now().nanoseconds
        now = t
        if t >= deadline {
            cancel()
            return true
        }
        return false
    }

    /// Whether a wait in this scope is cancelled: some scope up to the first shield is, or, past every
    /// scope, the wait's task is (`taskCancelled`, asked only then).
    func isCancelled(forWaitSeenTaskCancellation taskCancelled: @autoclosure () -> Bool) -> Bool {
        var now: Int64?
        var scope: CancelScope? = self
        while let current = scope {
            if current.isSelfCancelled(now: &now) { return true }
            if current.shield { return false }
            scope = current.parent
        }
        return taskCancelled()
    }

    /// Whether code running in this scope, in the calling task, is cancelled.
    func isEffectivelyCancelled() -> Bool { isCancelled(forWaitSeenTaskCancellation: Task.isCancelled) }

    /// Whether this scope or an enclosing one is a shield right now: then Swift task cancellation does not
    /// reach the waits inside.
    @usableFromInline var isShieldedChain: Bool {
        var scope: CancelScope? = self
        while let current = scope {
            if current.shield { return true }
            scope = current.parent
        }
        return false
    }

    /// The earliest deadline that applies to code in this scope, `past` when it is cancelled.
    func effectiveDeadline() -> RuntimeInstant {
        var now: Int64?
        var earliest = RuntimeInstant.never
        var scope: CancelScope? = self
        while let current = scope {
            if current.isSelfCancelled(now: &now) { return .distantPast }
            earliest = min(earliest, current.deadline)
            if current.shield { return earliest }
            scope = current.parent
        }
        return Task.isCancelled ? .distantPast : earliest
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

    /// Registers `waker` with this scope and every enclosing one, so that a cancellation anywhere in the
    /// chain — also one a shield hides now but may stop hiding — can reach it; wakes it at once if the wait is
    /// cancelled already. Arms deadline timers lazily, up to the first shield (deadlines above it cannot
    /// reach the wait until the shield is turned off, which arms them then).
    @usableFromInline
    func registerWaker(_ waker: any CancellationWaker) {
        let registration = Registration(waker: waker, innermost: self)
        let id = ObjectIdentifier(waker)
        var scope: CancelScope? = self
        var armTimers = true
        while let current = scope {
            current.state.withLock { $0.registrations[id] = registration }
            if armTimers { current.armDeadlineTimerIfNeeded() }
            if current.shield { armTimers = false }
            scope = current.parent
        }
        if isCancelled(forWaitSeenTaskCancellation: waker.hasSeenTaskCancellation) { waker.wakeForCancellation() }
    }

    /// Undoes ``registerWaker(_:)``.
    @usableFromInline
    func unregisterWaker(_ waker: any CancellationWaker) {
        let id = ObjectIdentifier(waker)
        var scope: CancelScope? = self
        while let current = scope {
            _ = current.state.withLock { $0.registrations.removeValue(forKey: id) }
            scope = current.parent
        }
    }

    /// After the shield came off: wakes the waits inside that an enclosing cancellation reaches now, and arms
    /// the enclosing deadlines for them.
    private func wakeWaitsNowCancelled() {
        let registrations = state.withLock { Self.parkedWaits($0) }
        guard !registrations.isEmpty else { return }
        var scope = parent
        while let current = scope {
            current.armDeadlineTimerIfNeeded()
            if current.shield { break }
            scope = current.parent
        }
        for (waker, innermost) in registrations where innermost.isCancelled(forWaitSeenTaskCancellation:
            waker.hasSeenTaskCancellation)
        {
            waker.wakeForCancellation()
        }
    }

    // MARK: Deadline timer

    /// Arms a backend timer for the deadline when something waits here and none is armed for it. The
    /// backend is called outside the scope's lock: a backend may run `fire` on another thread at once, and
    /// `fire` takes this lock.
    private func armDeadlineTimerIfNeeded() {
        guard let runtime = boundRuntime, !cancelFlag.load(ordering: .acquiring) else { return }
        let deadline = deadlineNanoseconds.load(ordering: .acquiring)
        guard deadline != .max else { return }
        let plan = state.withLock { state -> (generation: Int, stale: (any BackendRegistration)?)? in
            guard !state.exited, !state.registrations.isEmpty, state.timerDeadline != deadline else { return nil }
            let stale = state.deadlineTimer
            state.deadlineTimer = nil
            state.timerDeadline = deadline
            state.timerGeneration &+= 1
            return (state.timerGeneration, stale)
        }
        guard let plan else { return }
        plan.stale?.cancel()
        let generation = plan.generation
        let timer = runtime.backend.scheduleTimer(at: RuntimeInstant(nanoseconds: deadline)) { [weak self] in
            self?.deadlineTimerFired(generation: generation)
        }
        let unused = state.withLock { state -> (any BackendRegistration)? in
            guard state.timerGeneration == generation else { return timer }  // reset meanwhile
            state.deadlineTimer = timer
            return nil
        }
        unused?.cancel()
    }

    private func deadlineTimerFired(generation: Int) {
        var now: Int64?
        if isSelfCancelled(now: &now) { return }  // cancels (and wakes) when the deadline has passed
        // The deadline moved later since this timer was armed: arm again if anybody still waits.
        let current = state.withLock { state -> Bool in
            guard state.timerGeneration == generation else { return false }
            state.deadlineTimer = nil
            state.timerDeadline = nil
            state.timerGeneration &+= 1
            return true
        }
        if current { armDeadlineTimerIfNeeded() }
    }

    private func setDeadline(_ deadline: RuntimeInstant) {
        _ = pendingTimeoutNanoseconds.exchange(.min, ordering: .acquiringAndReleasing)
        deadlineNanoseconds.store(deadline.nanoseconds, ordering: .releasing)
        guard isEntered else { return }
        var now: Int64?
        if isSelfCancelled(now: &now) { return }  // in the past: cancelled, waits woken
        armDeadlineTimerIfNeeded()  // re-arms for the new deadline when something waits
    }

    // MARK: Running

    /// Whether a cancellation leaving the body is this scope's to swallow (trio's rule).
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
            state.timerGeneration &+= 1
            state.timerDeadline = nil
            defer { state.deadlineTimer = nil }
            return state.deadlineTimer
        }
        timer?.cancel()
    }

    /// Runs `body` in this (bound) scope.
    func runEntered<T>(
        isolation: isolated (any Actor)?,
        _ body: (CancelScope) async throws -> T
    ) async throws -> T? {
        defer { exit() }
        do {
            return try await CancelScope.$current.withValue(
                self, operation: { try await body(self) }, isolation: isolation)
        } catch let error as CancellationError {
            if catchesCancellation() {
                caughtFlag.store(true, ordering: .releasing)
                return nil
            }
            throw error
        } catch let group as ErrorGroup {
            // Cancellations inside a group are this scope's when it catches: strip them, keep the failures.
            let failures = group.errors.filter { !($0 is CancellationError) }
            guard failures.count < group.errors.count, catchesCancellation() else { throw group }
            caughtFlag.store(true, ordering: .releasing)
            if failures.isEmpty { return nil }
            if failures.count == 1 { throw failures[0] }
            throw ErrorGroup(errors: failures)
        }
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
        return try await scope.runEntered(isolation: isolation, body)
    }
}

extension RuntimeInstant {
    /// Before every other instant: the effective deadline of code that is cancelled already (trio's `-inf`).
    public static let distantPast = RuntimeInstant(nanoseconds: .min)
}
