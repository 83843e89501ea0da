import Runtime
import Synchronization

// trio's and anyio's semantics, item by item: waiting until every task is blocked, owners and statistics of
// the primitives, strict FIFO, task-group corners. Ordering-sensitive steps wait with
// `Runtime.waitAllTasksBlocked()` instead of sleeping.

/// Runs `body` and checks that it throws a ``RuntimeError`` with `code`.
func expectRuntimeError(
    _ code: RuntimeError.Code,
    _ what: String,
    file: String = #fileID,
    line: Int = #line,
    _ body: () async throws -> Void
) async throws {
    do {
        try await body()
    } catch let error as RuntimeError {
        try check(error.code == code, "\(what): expected \(code), got \(error)", file: file, line: line)
        return
    }
    throw fail("\(what): expected RuntimeError.\(code), nothing was thrown", file: file, line: line)
}

extension RuntimeConformance {
    static let trioTests: [ConformanceTest] = [
        ConformanceTest(
            "n.wait-all-tasks-blocked",
            "waitAllTasksBlocked returns once every task waits, before a virtual clock jumps; cushion; errors"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let event = Event()
                let lock = Lock()
                let progress = Gauge()
                try await lock.acquire()
                let start = runtime.now
                try await Runtime.withTaskGroup { group in
                    try group.startSoon { try await event.wait() }
                    try group.startSoon {
                        try await lock.acquire()
                        try lock.release()
                    }
                    try group.startSoon { try await Runtime.sleep(for: .seconds(100)) }
                    try group.startSoon {
                        // A busy task: not blocked until its 50 checkpoints are done.
                        for _ in 0..<50 {
                            progress.increment()
                            try await Runtime.checkpoint()
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try check(progress.value == 50, "returned while a task was still runnable (\(progress.value) of 50)")
                    try check(event.statistics().tasksWaiting == 1, "the event waiter is not waiting")
                    try check(lock.statistics().tasksWaiting == 1, "the lock waiter is not waiting")
                    // trio: a waiter wakes before the (virtual) clock jumps to the sleeper's deadline.
                    try check(elapsed(since: start, on: runtime) < .seconds(50), "the clock jumped before the waiter woke")
                    try await Runtime.waitAllTasksBlocked(cushion: .milliseconds(2))
                    try check(elapsed(since: start, on: runtime) < .seconds(50), "the cushion let the clock jump")
                    event.set()
                    try lock.release()
                    try await Runtime.waitAllTasksBlocked()
                    try check(event.statistics().tasksWaiting == 0 && !lock.isLocked, "woken tasks did not run")
                    group.cancel()
                }
                try await expectRuntimeError(.invalidArgument, "a negative cushion") {
                    try await Runtime.waitAllTasksBlocked(cushion: .milliseconds(-1))
                }
                // Cancellable like every runtime wait.
                let result: Void? = try await withCancelScope { scope in
                    try await Runtime.withTaskGroup { group in
                        try group.startSoon {
                            // Runnable throughout (never in a runtime wait), then cancels the waiter's scope.
                            for _ in 0..<100 { await Task.yield() }
                            scope.cancel()
                        }
                        try await Runtime.waitAllTasksBlocked()
                    }
                }
                try check(result == nil, "waitAllTasksBlocked was not cancelled")
            }
        },

        ConformanceTest(
            "n.lock-owner",
            "a Lock refuses re-acquisition by its owner and release by another task; statistics show the owner"
        ) { backend in
            try await backend.run {
                let lock = Lock()
                let fresh = lock.statistics()
                try check(!fresh.isLocked && fresh.owner == nil && fresh.tasksWaiting == 0, "fresh lock: \(fresh)")
                try await lock.acquire()
                try check(lock.statistics().owner == TaskIdentity.current, "the owner is not the acquiring task")
                try await expectRuntimeError(.alreadyHeld, "acquire by the owner") { try await lock.acquire() }
                try await expectRuntimeError(.alreadyHeld, "tryAcquire by the owner") { _ = try lock.tryAcquire() }
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        try await expectRuntimeError(.notHeld, "release by another task") { try lock.release() }
                        try check(!(try lock.tryAcquire()), "tryAcquire of a held lock succeeded")
                    }
                }
                try check(lock.isLocked, "another task's release freed the lock")
                try lock.release()
                try await expectRuntimeError(.notHeld, "release of a free lock") { try lock.release() }
                // Hand-off: the waiter owns the lock as soon as it is released, before it runs.
                try await lock.acquire()
                try await Runtime.withTaskGroup { group in
                    let waiter = Locked<TaskIdentity?>(nil)
                    try group.startSoon {
                        waiter.withLock { $0 = TaskIdentity.current }
                        try await lock.acquire()
                        try lock.release()
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try lock.release()
                    try check(lock.statistics().owner == waiter.withLock({ $0 }), "release did not hand the lock over")
                    try check(!(try lock.tryAcquire()), "the releaser took the lock back before the waiter")
                }
            }
        },

        ConformanceTest(
            "n.fifo",
            "Lock, Semaphore and CapacityLimiter serve three tasks contending five times each in strict FIFO"
        ) { backend in
            try await backend.run {
                let lock = Lock()
                let semaphore = try Semaphore(initialValue: 1)
                let limiter = try CapacityLimiter(totalTokens: 1)
                let primitives: [(String, @Sendable () async throws -> Void, @Sendable () throws -> Void)] = [
                    ("Lock", { try await lock.acquire() }, { try lock.release() }),
                    ("Semaphore", { try await semaphore.acquire() }, { try semaphore.release() }),
                    ("CapacityLimiter", { try await limiter.acquire() }, { try limiter.release() }),
                ]
                for (name, acquire, release) in primitives {
                    let order = Recorder<Int>()
                    try await acquire()
                    try await Runtime.withTaskGroup { group in
                        for id in 0..<3 {
                            try group.startSoon {
                                for _ in 0..<5 {
                                    try await acquire()
                                    order.append(id)
                                    try release()  // and straight back in line, behind the others
                                }
                            }
                            try await Runtime.waitAllTasksBlocked()  // queued in the order 0, 1, 2
                        }
                        try release()
                    }
                    let expected = Array(repeating: [0, 1, 2], count: 5).flatMap { $0 }
                    try check(order.values == expected, "\(name) served \(order.values), expected strict FIFO")
                }
            }
        },

        ConformanceTest(
            "n.limiter-borrowers",
            "CapacityLimiter lends one token per borrower, validates its size, and lends raised tokens at once"
        ) { backend in
            try await backend.run {
                try await expectRuntimeError(.invalidArgument, "a negative size") {
                    _ = try CapacityLimiter(totalTokens: -1)
                }
                let limiter = try CapacityLimiter(totalTokens: 2)
                try await limiter.acquire()
                try await expectRuntimeError(.alreadyHeld, "borrowing twice") { try await limiter.acquire() }
                try check(limiter.borrowedTokens == 1, "the second borrow was counted")
                let other = CapacityLimiter.Borrower("job 7")
                try await limiter.acquire(onBehalfOf: other)
                let stats = limiter.statistics()
                try check(
                    stats.borrowedTokens == 2 && stats.totalTokens == 2 && Set(stats.borrowers) == [.task(try taskID()), other],
                    "statistics: \(stats)")
                try await expectRuntimeError(.notHeld, "a release without a loan") {
                    try limiter.release(onBehalfOf: CapacityLimiter.Borrower("nobody"))
                }
                try await expectRuntimeError(.invalidArgument, "a negative total") { try limiter.setTotalTokens(-1) }
                try check(limiter.totalTokens == 2, "a refused total changed the limiter")
                let served = Recorder<Int>()
                try await Runtime.withTaskGroup { group in
                    for id in 0..<3 {
                        try group.startSoon {
                            try await limiter.acquire()
                            served.append(id)
                        }
                        try await Runtime.waitAllTasksBlocked()
                    }
                    try check(limiter.statistics().tasksWaiting == 3, "three waiters expected")
                    try limiter.setTotalTokens(4)  // two new tokens: the first two waiters get them now
                    try check(limiter.statistics().tasksWaiting == 1, "raising the total did not lend at once")
                    try limiter.release()
                    try limiter.release(onBehalfOf: other)
                }
                try check(served.values == [0, 1, 2], "waiters were served as \(served.values)")
                let closed = try CapacityLimiter(totalTokens: 0)
                try check(!(try closed.tryAcquire()), "a limiter of 0 lent a token")
            }
        },

        ConformanceTest(
            "n.condition-statistics",
            "Condition needs its lock for wait and notify; every primitive and channel reports statistics"
        ) { backend in
            try await backend.run {
                let condition = Condition()
                try await expectRuntimeError(.notHeld, "notify without the lock") { try condition.notify() }
                try await expectRuntimeError(.notHeld, "notifyAll without the lock") { try condition.notifyAll() }
                try await expectRuntimeError(.notHeld, "wait without the lock") { try await condition.wait() }
                let event = Event()
                let semaphore = try Semaphore(initialValue: 0)
                let (send, receive) = try makeMemoryChannel(of: Int.self, bufferSize: 1)
                try await expectRuntimeError(.invalidArgument, "a negative buffer") {
                    _ = try makeMemoryChannel(of: Int.self, bufferSize: -1)
                }
                try await Runtime.withTaskGroup { group in
                    try group.startSoon { try await condition.withLock { try await condition.wait() } }
                    try group.startSoon { try await event.wait() }
                    try group.startSoon { try await semaphore.acquire() }
                    try group.startSoon {
                        try await send.send(1)
                        try await send.send(2)
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try check(condition.statistics().tasksWaiting == 1, "condition: \(condition.statistics())")
                    try check(event.statistics().tasksWaiting == 1, "event: \(event.statistics())")
                    try check(semaphore.statistics().value == 0 && semaphore.statistics().tasksWaiting == 1, "semaphore")
                    let channel = receive.statistics()
                    try check(
                        channel == send.statistics() && channel.currentBufferUsed == 1 && channel.maxBufferSize == 1
                            && channel.tasksWaitingSend == 1 && channel.openSendChannels == 1,
                        "channel: \(channel)")
                    try check(group.statistics().tasksRunning == 4, "group: \(group.statistics())")
                    try await condition.withLock { try condition.notifyAll() }
                    event.set()
                    try semaphore.release()
                    _ = try await receive.receive()
                    _ = try await receive.receive()
                }
            }
        },

        ConformanceTest(
            "p.task-group-corners",
            "an empty group's exit yields without raising; start() in a cancelled scope; started() twice"
        ) { backend in
            try await backend.run {
                // Leaving an empty group lets other tasks run, and does not raise a pending cancellation.
                let ran = Flag()
                try await Runtime.withTaskGroup { outer in
                    try outer.startSoon { ran.set() }
                    let caught: Void? = try await withCancelScope { scope in
                        scope.cancel()
                        try await Runtime.withTaskGroup { _ in }
                    }
                    try check(caught != nil, "an empty group's exit raised the pending cancellation")
                    try check(ran.isSet, "leaving an empty group did not let another task run")
                }
                // start() in a cancelled scope: the task runs until its first checkpoint, start() reports it.
                try await Runtime.withTaskGroup { group in
                    let steps = Recorder<String>()
                    let outcome: Int? = try await withCancelScope { scope in
                        scope.cancel()
                        return try await group.start { (status: Runtime.TaskStatus<Int>) in
                            steps.append("started")
                            try await Runtime.checkpoint()
                            steps.append("after the checkpoint")
                            try status.started(1)
                        }
                    }
                    try check(outcome == nil, "start() in a cancelled scope returned \(String(describing: outcome))")
                    try check(steps.values == ["started"], "the task ran as \(steps.values)")
                    // started() twice is a typed error; the first value wins.
                    let value = try await group.start { (status: Runtime.TaskStatus<Int>) in
                        try status.started(7)
                        try await expectRuntimeError(.alreadyStarted, "a second started()") { try status.started(8) }
                    }
                    try check(value == 7, "start() returned \(value)")
                }
            }
        },

        ConformanceTest(
            "p.error-group-cancellations",
            "a scope that catches its cancellation strips cancellations from an ErrorGroup and drops it when empty"
        ) { backend in
            try await backend.run {
                let kept: Void? = try await withCancelScope { scope in
                    scope.cancel()
                    throw ErrorGroup(errors: [CancellationError(), CancellationError()])
                }
                try check(kept == nil, "an ErrorGroup of cancellations was not absorbed")
                do {
                    _ = try await withCancelScope { scope in
                        scope.cancel()
                        throw ErrorGroup(errors: [CancellationError(), Boom(id: 1)])
                    }
                    throw fail("the failure was absorbed")
                } catch let error as Boom {
                    try check(error.id == 1, "got \(error)")
                }
                do {
                    _ = try await withCancelScope { scope in
                        scope.cancel()
                        throw ErrorGroup(errors: [Boom(id: 1), CancellationError(), Boom(id: 2)])
                    }
                    throw fail("the failures were absorbed")
                } catch let group as ErrorGroup {
                    try check(group.errors.count == 2 && group.errors.allSatisfy { $0 is Boom }, "got \(group)")
                }
                // A scope that is not cancelled leaves the group alone.
                do {
                    _ = try await withCancelScope { _ in throw ErrorGroup(errors: [CancellationError(), Boom(id: 3)]) }
                    throw fail("the group was absorbed")
                } catch let group as ErrorGroup {
                    try check(group.errors.count == 2, "got \(group)")
                }
            }
        },
    ]
}

/// The calling task's identity, which a runtime test always has.
func taskID() throws(ConformanceFailure) -> TaskIdentity {
    guard let id = TaskIdentity.current else { throw fail("no current task") }
    return id
}

