/// A point on a runtime's monotonic clock, in nanoseconds from an origin the backend picks.
///
/// Instants of different runtimes are not comparable: a virtual-time runtime has its own origin.
public struct RuntimeInstant: InstantProtocol, Sendable, Hashable, Comparable, CustomStringConvertible {
    public typealias Duration = Swift.Duration

    /// Nanoseconds since the clock's origin.
    public var nanoseconds: Int64

    @inlinable public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }

    /// A deadline that never comes (anyio's `math.inf`).
    public static let never = RuntimeInstant(nanoseconds: .max)

    /// Whether this is ``never``.
    @inlinable public var isNever: Bool { nanoseconds == .max }

    @inlinable public func advanced(by duration: Duration) -> RuntimeInstant {
        if isNever { return self }
        let (sum, overflow) = nanoseconds.addingReportingOverflow(duration.saturatingNanoseconds)
        if overflow { return duration < .zero ? RuntimeInstant(nanoseconds: .min) : .never }
        return RuntimeInstant(nanoseconds: sum)
    }

    @inlinable public func duration(to other: RuntimeInstant) -> Duration {
        let (diff, overflow) = other.nanoseconds.subtractingReportingOverflow(nanoseconds)
        if overflow { return other > self ? .nanoseconds(Int64.max) : .nanoseconds(Int64.min) }
        return .nanoseconds(diff)
    }

    @inlinable public static func < (lhs: RuntimeInstant, rhs: RuntimeInstant) -> Bool {
        lhs.nanoseconds < rhs.nanoseconds
    }

    public var description: String { isNever ? "never" : "\(Double(nanoseconds) / 1e9)s" }
}

extension Duration {
    /// The duration in whole nanoseconds, saturating at `Int64`'s range.
    @inlinable public var saturatingNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (ns, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        let (total, overflow2) = ns.addingReportingOverflow(attoseconds / 1_000_000_000)
        if overflow2 { return seconds < 0 ? .min : .max }
        return total
    }
}

/// The current runtime's clock as a Swift `Clock`, so APIs that take a clock (for example
/// swift-async-algorithms' `debounce`) wait through the runtime and take part in its cancel scopes.
public struct RuntimeClock: Clock, Sendable {
    public typealias Instant = RuntimeInstant
    private let runtime: Runtime

    /// The clock of `runtime`.
    public init(_ runtime: Runtime) { self.runtime = runtime }

    public var now: RuntimeInstant { runtime.now }
    public var minimumResolution: Duration { .nanoseconds(1) }

    public func sleep(until deadline: RuntimeInstant, tolerance: Duration?) async throws {
        try await runtime.sleep(until: deadline)
    }
}
