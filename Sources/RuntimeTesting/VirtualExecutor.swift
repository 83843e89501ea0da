import Runtime
import Synchronization

/// The executor of a virtual-time runtime.
///
/// Reference-counted: the backend holds it, and so does every task that prefers it (Swift retains a task's
/// preferred executor). It refers to the backend weakly, so that the two do not keep each other alive; jobs
/// of a task that outlived the backend go to Swift's global executor instead of being lost.
final class VirtualExecutor: TaskExecutor, Sendable {
    private let backendReference = Locked<WeakBackend>(WeakBackend())
    private struct WeakBackend: Sendable {
        weak var backend: VirtualTimeBackend?
    }

    init() {}

    func attach(_ backend: VirtualTimeBackend) { backendReference.withLock { $0.backend = backend } }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        if let backend = backendReference.withLock({ $0.backend }) {
            backend.submit(.job(job))
        } else {
            globalConcurrentExecutor.enqueue(ExecutorJob(job))
        }
    }
}

/// A virtual timer.
struct VirtualTimer: BackendRegistration {
    let entry: TimerQueue.Entry
    let backend: VirtualTimeBackend

    func cancel() {
        entry.markCancelled()
        backend.removeTimer(entry)
    }
}
