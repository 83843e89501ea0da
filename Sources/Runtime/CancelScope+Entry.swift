// The ways into a cancel scope: a new scope around a body, with or without a deadline, and the effective
// deadline of the code running now.

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
///
/// - Throws: ``RuntimeError/Code/invalidArgument`` for a negative `duration`; whatever `body` throws.
public func moveOnAfter<T>(
    _ duration: Duration,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T? {
    try CancelScope.validate(duration, "moveOnAfter", "duration")
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
/// The body receives the scope, like ``moveOnAfter(_:shield:isolation:_:)``'s. As in trio, a scope that
/// catches its own cancellation makes this throw ``TimeoutError``, also when the cancellation came from
/// ``CancelScope/cancel()`` rather than the deadline (use `moveOnAfter` to stop early without an error).
///
/// - Throws: ``TimeoutError`` when the time ran out; ``RuntimeError/Code/invalidArgument`` for a negative
///   `duration`; whatever `body` throws.
public func failAfter<T>(
    _ duration: Duration,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T {
    try CancelScope.validate(duration, "failAfter", "duration")
    let runtime = try Runtime.current
    return try await fail(at: runtime.now.advanced(by: duration), shield: shield, isolation: isolation, body)
}

/// `failAfter` for a body that does not need its scope.
public func failAfter<T>(
    _ duration: Duration,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> T
) async throws -> T {
    try await failAfter(duration, shield: shield, isolation: isolation) { _ in try await body() }
}

/// Runs `body` until `deadline` at the latest, else throws ``TimeoutError`` (anyio's `fail_after` with an
/// absolute deadline). The body receives the scope; see `failAfter(_:shield:_:)`.
public func fail<T>(
    at deadline: RuntimeInstant,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: (CancelScope) async throws -> T
) async throws -> T {
    var value: T?
    let scope = CancelScope(runtime: try Runtime.current, parent: CancelScope.current, deadline: deadline, shield: shield)
    _ = try await scope.runEntered(isolation: isolation) { scope in value = try await body(scope) }
    guard let value else { throw TimeoutError(deadline: scope.deadline) }
    return value
}

/// `fail(at:)` for a body that does not need its scope.
public func fail<T>(
    at deadline: RuntimeInstant,
    shield: Bool = false,
    isolation: isolated (any Actor)? = #isolation,
    _ body: () async throws -> T
) async throws -> T {
    try await fail(at: deadline, shield: shield, isolation: isolation) { _ in try await body() }
}

extension Runtime {
    /// The earliest deadline that applies to the calling code, taking shields into account (trio's
    /// `current_effective_deadline`): ``RuntimeInstant/never`` when none does, ``RuntimeInstant/distantPast``
    /// when the code is cancelled already.
    public static func currentEffectiveDeadline() -> RuntimeInstant {
        if let scope = CancelScope.current { return scope.effectiveDeadline() }
        return Task.isCancelled ? .distantPast : .never
    }

    /// The earliest deadline of the scopes around the calling code, up to the first shield, whether or not it
    /// has passed: ``RuntimeInstant/never`` when none has one. Unlike ``currentEffectiveDeadline()`` it does not
    /// turn into ``RuntimeInstant/distantPast`` once the code is cancelled, so a library can tell a cancellation
    /// that came from a deadline (now or earlier) from one that came from `cancel()`, and bound its clean-up
    /// by the caller's deadline.
    public static func currentDeadline() -> RuntimeInstant {
        var earliest = RuntimeInstant.never
        var scope = CancelScope.current
        while let current = scope {
            earliest = min(earliest, current.deadline)
            if current.shield { break }
            scope = current.parent
        }
        return earliest
    }
}
