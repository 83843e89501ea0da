import Synchronization

/// What `Runtime.runBlocking(limiter:onCancel:_:)` does when the caller is cancelled while the closure runs.
///
/// A closure that has not started yet never starts once the caller is cancelled, whatever the choice.
public struct BlockingCancellation: Sendable {
    @usableFromInline
    enum Kind: Sendable {
        case waitForCompletion
        case abandon
        case interrupt(@Sendable () -> Void)
    }
    @usableFromInline let kind: Kind

    /// Wait for the closure to finish and return its result; the cancellation is seen by the next runtime
    /// wait. The default: nothing the closure did is lost (anyio's `abandon_on_cancel=False`).
    public static let waitForCompletion = BlockingCancellation(kind: .waitForCompletion)

    /// Throw `CancellationError` at once; the closure runs on to the end on its thread and its result is
    /// dropped. It keeps its limiter token until it ends (anyio's `abandon_on_cancel=True`).
    public static let abandon = BlockingCancellation(kind: .abandon)

    /// Call `interrupt` (from any thread) to make the closure stop early, for example `sqlite3_interrupt`,
    /// then wait for it and return what it returns or throws.
    public static func interrupt(_ interrupt: @escaping @Sendable () -> Void) -> BlockingCancellation {
        BlockingCancellation(kind: .interrupt(interrupt))
    }
}

extension Runtime {
    /// Runs the synchronous, possibly blocking, `work` on a worker thread and returns its result on the
    /// caller's executor (anyio's `to_thread.run_sync`).
    ///
    /// At most `limiter.totalTokens` closures of one limiter run at once (`defaultBlockingLimiter`, 40, when
    /// none is given); the rest wait for a token, and that wait is cancellable.
    ///
    /// - Parameters:
    ///   - limiter: the limiter to take a token from.
    ///   - onCancel: what happens when the caller is cancelled while `work` runs; see
    ///     ``BlockingCancellation``. If the caller is cancelled before `work` started, it never starts.
    ///   - work: the closure.
    /// - Throws: what `work` throws; `CancellationError`.
    public func runBlocking<T: Sendable>(
        limiter: CapacityLimiter? = nil,
        onCancel: BlockingCancellation = .waitForCompletion,
        _ work: @escaping @Sendable () throws -> T
    ) async throws -> T {
        let limiter = limiter ?? defaultBlockingLimiter
        let parker = Parker<T>()
        // The token is lent to this call, not to the task: under `.abandon` the worker gives it back after
        // the task has moved on (and may be in another runBlocking call).
        let borrower = CapacityLimiter.Borrower(ObjectIdentifier(parker))
        try await limiter.acquireWithoutYield(onBehalfOf: borrower)
        // Cancelled while waiting for the token, or in a scope cancelled meanwhile: don't start.
        do {
            try CancelScope.checkCancelled(CancelScope.current)
        } catch {
            try? limiter.release(onBehalfOf: borrower)
            throw error
        }
        // pending → running (the worker took it) or pending → withdrawn (the caller was cancelled first).
        let gate = StartGate()
        let abandons: Bool
        if case .abandon = onCancel.kind { abandons = true } else { abandons = false }
        backend.runBlocking {
            // When the caller abandoned the call, the token is returned only once the work is over.
            defer { if abandons { try? limiter.release(onBehalfOf: borrower) } }
            guard gate.start() else { return }  // withdrawn while queued: never runs
            parker.resume(Result { try work() })
        }
        // Cancellation while the closure is still queued withdraws it; once it runs, the policy decides.
        let withdraw: @Sendable () -> Bool = {
            guard gate.withdraw() else { return false }
            parker.resume(throwing: CancellationError())
            return true
        }
        switch onCancel.kind {
        case .waitForCompletion:
            defer { try? limiter.release(onBehalfOf: borrower) }
            return try await Runtime.parkCallingOnCancel(parker) { _ = withdraw() }
        case .interrupt(let interrupt):
            defer { try? limiter.release(onBehalfOf: borrower) }
            return try await Runtime.parkCallingOnCancel(parker) { if !withdraw() { interrupt() } }
        case .abandon:
            do {
                return try await Runtime.park(parker) {}
            } catch {
                _ = gate.withdraw()  // still queued: it never starts (the worker returns the token)
                throw error
            }
        }
    }

    /// `runBlocking(limiter:onCancel:_:)` on the current runtime.
    public static func runBlocking<T: Sendable>(
        limiter: CapacityLimiter? = nil,
        onCancel: BlockingCancellation = .waitForCompletion,
        _ work: @escaping @Sendable () throws -> T
    ) async throws -> T {
        try await current.runBlocking(limiter: limiter, onCancel: onCancel, work)
    }
}

/// Decides, exactly once, whether a queued blocking closure runs or is withdrawn.
private final class StartGate: Sendable {
    private let state = Atomic<UInt8>(0)  // 0 pending, 1 running, 2 withdrawn
    /// The worker: returns whether the closure may run.
    func start() -> Bool { state.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).exchanged }
    /// The caller: returns whether the closure was withdrawn before it started.
    func withdraw() -> Bool { state.compareExchange(expected: 0, desired: 2, ordering: .acquiringAndReleasing).exchanged }
}
