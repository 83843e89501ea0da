/// The counting core of ``Semaphore``: available permits and a FIFO of waiters; a released permit goes
/// straight to the first waiter.
struct PermitPool: Sendable {
    var available: Int
    var waiters = WaitQueue<Void>()

    init(available: Int) { self.available = available }

    /// Takes a permit if one is free.
    mutating func tryTake() -> Bool {
        guard available > 0 else { return false }
        available -= 1
        return true
    }

    /// Takes a permit or queues `parker`; returns whether the permit was taken at once.
    mutating func takeOrEnqueue(_ parker: Parker<Void>) -> Bool {
        if tryTake() { return true }
        waiters.append(parker)
        return false
    }

    /// Returns a permit, handing it to the first waiter if there is one.
    mutating func give() {
        if !waiters.resumeFirst(.success(())) { available += 1 }
    }
}

extension PermitPool {
    /// Shared acquire path: checks cancellation, takes a permit or parks for one. Returns whether the permit
    /// was taken without waiting.
    static func acquire(
        isolation: isolated (any Actor)? = #isolation,
        take: (Parker<Void>) -> Bool,
        remove: (Parker<Void>) -> Void
    ) async throws -> Bool {
        try CancelScope.checkCancelled(CancelScope.current)
        let parker = Parker<Void>()
        var immediate = false
        do {
            try await Runtime.park(parker) {
                if take(parker) {
                    immediate = true
                    parker.resume(returning: ())
                }
            }
        } catch {
            remove(parker)
            throw error
        }
        return immediate
    }
}
