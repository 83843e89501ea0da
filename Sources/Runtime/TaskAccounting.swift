public import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Counts a runtime's tasks and how many of them are parked in a runtime wait, so that a test can wait until
/// nothing is runnable (`Runtime.waitAllTasksBlocked(cushion:)`, trio's `wait_all_tasks_blocked`).
///
/// Counted tasks are those the runtime starts or is entered by: the run's root, tasks of
/// ``Runtime/TaskGroup``, and every `Runtime.enter`. A wait counts as blocked from the moment its task
/// suspends on a ``Parker`` until the parker is resumed, both under the parker's lock, so a task is never
/// counted blocked and runnable at once.
@usableFromInline
final class TaskAccounting: Sendable {
    /// Tasks of the runtime that have not finished.
    let tasks = Atomic<Int>(0)
    /// Of those, how many are suspended in a runtime wait.
    @usableFromInline let blocked = Atomic<Int>(0)
    /// How many waits were resumed so far: a change tells an idle waiter that something ran.
    @usableFromInline let wakeups = Atomic<Int>(0)
    @usableFromInline let idleWaiterCount = Atomic<Int>(0)
    private let idleWaiters = Locked<[ObjectIdentifier: Parker<Void>]>([:])

    init() {}

    @inlinable func taskBlocked() { blocked.add(1, ordering: .relaxed) }

    @inlinable func taskUnblocked() {
        blocked.subtract(1, ordering: .relaxed)
        wakeups.add(1, ordering: .relaxed)
    }

    func taskStarted() { tasks.add(1, ordering: .relaxed) }

    func taskFinished() {
        tasks.subtract(1, ordering: .relaxed)
        if hasIdleWaiters { wakeIdleWaitersIfAllBlocked() }
    }

    /// Whether every counted task is suspended in a runtime wait.
    var allBlocked: Bool { blocked.load(ordering: .relaxed) >= tasks.load(ordering: .relaxed) }

    @inlinable var hasIdleWaiters: Bool { idleWaiterCount.load(ordering: .relaxed) > 0 }

    @usableFromInline func wakeIdleWaitersIfAllBlocked() {
        guard allBlocked else { return }
        let waiters = idleWaiters.withLock { waiters -> [Parker<Void>] in
            defer { waiters.removeAll() }
            idleWaiterCount.store(0, ordering: .relaxed)
            return Array(waiters.values)
        }
        for waiter in waiters { waiter.resume(returning: ()) }
    }

    func addIdleWaiter(_ parker: Parker<Void>) {
        idleWaiters.withLock { waiters in
            waiters[ObjectIdentifier(parker)] = parker
            idleWaiterCount.store(waiters.count, ordering: .relaxed)
        }
    }

    func removeIdleWaiter(_ parker: Parker<Void>) {
        idleWaiters.withLock { waiters in
            waiters[ObjectIdentifier(parker)] = nil
            idleWaiterCount.store(waiters.count, ordering: .relaxed)
        }
    }
}

extension Runtime {
    /// Returns once every task of this runtime is blocked in a runtime wait and nothing is runnable, and has
    /// stayed so for `cushion` of real time (trio's and anyio's `wait_all_tasks_blocked`).
    ///
    /// Use it in tests to reach a known state without sleeping: start tasks, wait until all are blocked, then
    /// act and assert.
    ///
    /// ```swift
    /// try group.startSoon { try await lock.acquire() }     // will block: the lock is held
    /// try await Runtime.waitAllTasksBlocked()
    /// #expect(lock.statistics().tasksWaiting == 1)
    /// ```
    ///
    /// Counted tasks are the run's root task, tasks started by ``TaskGroup``, and tasks that joined with
    /// ``enter(isolation:_:)``. Swift's own child tasks (`async let`, Swift's `TaskGroup`) are not counted:
    /// start tasks through a runtime task group where a test relies on this. A task awaiting something the
    /// runtime does not own (`Task.sleep`, another library's continuation) counts as running.
    ///
    /// The cushion is real time even on a virtual clock, and while it runs the virtual clock stands still:
    /// like trio's, a task waiting here is woken before the clock jumps. Tasks with the same cushion wake
    /// together; a task with a smaller cushion wakes first.
    ///
    /// - Parameters:
    ///   - cushion: how long everything must stay blocked (0, the default: return as soon as it is).
    ///   - isolation: the caller's isolation (leave the default).
    /// - Throws: ``RuntimeError/Code/invalidArgument`` for a negative cushion; `CancellationError`.
    public func waitAllTasksBlocked(
        cushion: Duration = .zero,
        isolation: isolated (any Actor)? = #isolation
    ) async throws {
        guard cushion >= .zero else {
            throw RuntimeError(.invalidArgument, "waitAllTasksBlocked: cushion must be >= 0, got \(cushion)")
        }
        while true {
            let parker = Parker<Void>()
            accounting.addIdleWaiter(parker)
            do {
                // Counted as blocked itself: the wait that makes the count complete wakes it.
                try await Runtime.park(parker) { if accounting.allBlocked { parker.resume(returning: ()) } }
            } catch {
                accounting.removeIdleWaiter(parker)
                throw error
            }
            accounting.removeIdleWaiter(parker)
            let mark = accounting.wakeups.load(ordering: .relaxed)
            if cushion > .zero {
                // A real-time pause on a thread, not counted as a wake-up; a virtual clock stands still while
                // blocking work runs, so no deadline passes during the cushion.
                let microseconds = UInt32(clamping: cushion.saturatingNanoseconds / 1_000)
                let pause = Parker<Void>()
                backend.runBlocking {
                    _ = usleep(microseconds)
                    pause.resume(returning: ())
                }
                // Not counted as blocked (nor its end as a wake-up): the caller is the one waiting for idleness.
                _ = try? await pause.wait()
            }
            // Let whatever was already queued (a due timer, a ready fd) run before deciding.
            await Task.yield()
            await Task.yield()
            if accounting.wakeups.load(ordering: .relaxed) == mark {
                try CancelScope.checkCancelled(CancelScope.current)
                return
            }
        }
    }

    /// `waitAllTasksBlocked(cushion:isolation:)` on the current runtime.
    public static func waitAllTasksBlocked(
        cushion: Duration = .zero,
        isolation: isolated (any Actor)? = #isolation
    ) async throws {
        try await current.waitAllTasksBlocked(cushion: cushion, isolation: isolation)
    }
}
