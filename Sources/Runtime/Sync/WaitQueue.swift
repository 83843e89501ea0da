public import DequeModule

/// A FIFO of parked waiters. Waiters that were cancelled stay in the queue until they are skipped or
/// removed; ``resumeFirst(_:)`` hands a value only to a waiter that is still waiting.
@usableFromInline
struct WaitQueue<Value: Sendable>: Sendable {
    @usableFromInline var waiters = Deque<Parker<Value>>()

    @inlinable init() {}

    @inlinable var isEmpty: Bool { waiters.isEmpty }
    @inlinable var count: Int { waiters.count }

    @inlinable mutating func append(_ parker: Parker<Value>) { waiters.append(parker) }

    /// Resumes the first waiter that is still waiting; returns `false` when there was none.
    @inlinable mutating func resumeFirst(_ result: Result<Value, any Error>) -> Bool {
        while let parker = waiters.popFirst() {
            if parker.resume(result) { return true }
        }
        return false
    }

    /// Resumes every waiter with `result`.
    @inlinable mutating func resumeAll(_ result: Result<Value, any Error>) {
        while let parker = waiters.popFirst() { parker.resume(result) }
    }

    /// Removes `parker` (after it was cancelled); returns whether it was still queued.
    @inlinable @discardableResult
    mutating func remove(_ parker: Parker<Value>) -> Bool {
        guard let index = waiters.firstIndex(where: { $0 === parker }) else { return false }
        waiters.remove(at: index)
        return true
    }
}
