import Synchronization

/// The receiving end of ``Runtime/withCompletion(onCancel:resumedByOutsideThread:isolation:_:)``: resume it once, from any thread.
///
/// Later resumptions are ignored, and so is one that comes after the waiter stopped waiting (it was
/// cancelled under ``BlockingCancellation/abandon``).
public struct Completion<Value: Sendable>: Sendable {
    @usableFromInline let parker: Parker<Value>
    @usableFromInline let tracking: OutsideWork?

    @inlinable init(parker: Parker<Value>, tracking: OutsideWork?) {
        self.parker = parker
        self.tracking = tracking
    }

    /// Delivers `result`; returns whether this call was the one that finished the wait.
    @inlinable @discardableResult
    public func resume(with result: Result<Value, any Error>) -> Bool {
        let taken = parker.resume(result)
        tracking?.finish()  // after the resume: the woken task is queued before the clock may move
        return taken
    }

    /// Delivers `value`; returns whether this call was the one that finished the wait.
    @inlinable @discardableResult
    public func resume(returning value: Value) -> Bool { resume(with: .success(value)) }

    /// Delivers `error`; returns whether this call was the one that finished the wait.
    @inlinable @discardableResult
    public func resume(throwing error: any Error) -> Bool { resume(with: .failure(error)) }
}

extension Completion where Value == Void {
    /// Finishes the wait.
    @discardableResult
    public func resume() -> Bool { resume(with: .success(())) }
}

/// A backend that needs to know when work outside it is in flight: a virtual clock must not jump while a
/// thread it does not own is still computing a result someone waits for; an event loop may spin briefly
/// instead of sleeping while a result is about to arrive (the libuv backend does).
///
/// A refinement, not part of ``RuntimeBackend``: a backend without a use for it leaves it out.
/// ``Runtime/withCompletion(onCancel:resumedByOutsideThread:isolation:_:)`` calls it around every wait.
public protocol OutsideWorkTracking: RuntimeBackend {
    /// Outside work started; a matching ``outsideWorkFinished()`` follows, from any thread.
    func outsideWorkStarted()
    /// Outside work finished (its result was delivered, or dropped).
    func outsideWorkFinished()
}

/// Calls `outsideWorkFinished` exactly once.
@usableFromInline
final class OutsideWork: Sendable {
    private let backend: any OutsideWorkTracking
    private let finished = Atomic<Bool>(false)
    @usableFromInline init(_ backend: any OutsideWorkTracking) {
        self.backend = backend
        backend.outsideWorkStarted()
    }
    @usableFromInline func finish() {
        if !finished.exchange(true, ordering: .acquiringAndReleasing) { backend.outsideWorkFinished() }
    }
}

extension Runtime {
    /// Waits for a result that arrives through a callback from any thread — a C library's callback, a thread
    /// the caller owns — taking part in cancel scopes like every runtime wait.
    ///
    /// ```swift
    /// let rows = try await Runtime.withCompletion(onCancel: .interrupt { sqlite3_interrupt(db) }) { completion in
    ///     worker.submit { completion.resume(with: Result { try step(statement) }) }
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - onCancel: what a cancellation does while waiting: ``BlockingCancellation/waitForCompletion`` (the
    ///     default: keep waiting, return the result; the next runtime wait sees the cancellation),
    ///     ``BlockingCancellation/interrupt(_:)`` (call the hook, then keep waiting) or
    ///     ``BlockingCancellation/abandon`` (throw `CancellationError` at once; the late result is dropped).
    ///   - resumedByOutsideThread: whether a thread the runtime does not own produces the result (the default),
    ///     as opposed to another task of the runtime. A virtual-time backend holds its clock still only for
    ///     the former.
    ///   - isolation: the caller's isolation (leave the default).
    ///   - start: starts the work and arranges for `completion` to be resumed exactly once. It runs before
    ///     the wait; if it throws, that error is thrown and nothing is awaited.
    /// - Throws: what the completion delivers; `CancellationError` when the caller was already cancelled
    ///   (then `start` is not called) or, under `.abandon`, when it is cancelled while waiting.
    @inlinable
    public static func withCompletion<Value: Sendable>(
        onCancel: BlockingCancellation = .waitForCompletion,
        resumedByOutsideThread: Bool = true,
        isolation: isolated (any Actor)? = #isolation,
        _ start: (Completion<Value>) throws -> Void
    ) async throws -> Value {
        try CancelScope.checkCancelled(CancelScope.current)
        let parker = Parker<Value>()
        let tracking =
            resumedByOutsideThread
            ? (currentIfAny?.backend as? any OutsideWorkTracking).map(OutsideWork.init) : nil
        do {
            try start(Completion(parker: parker, tracking: tracking))
        } catch {
            tracking?.finish()
            throw error
        }
        // Already delivered (by `start` itself, or at once): take it, cancelled or not — nothing is lost.
        if parker.isResolved { return try await parker.wait() }
        switch onCancel.kind {
        case .waitForCompletion:
            return try await parkUninterruptibly(parker)
        case .interrupt(let interrupt):
            return try await parkCallingOnCancel(parker, interrupt)
        case .abandon:
            do {
                return try await park(parker) {}
            } catch {
                // A late resume reports that nobody took it; one that slipped in just now is still taken.
                if case .success(let value)? = parker.abandon() { return value }
                throw error
            }
        }
    }
}
