import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Cancel scopes as objects (made unbound, entered once, shield and deadline changed while running), the
// effective deadline, argument checks, and a task that outlives its run inside a timed scope.

extension RuntimeConformance {
    static let scopeObjectTests: [ConformanceTest] = [
        ConformanceTest(
            "o.unbound-scope",
            "a scope made before it is entered: cancelled beforehand, relative timeout resolved at entry, entered once"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let early = CancelScope()
                early.cancel()
                try check(early.runtime == nil && !early.isEntered, "an unentered scope has a runtime")
                let value: Int? = try await early.enter { _ in
                    try await Runtime.checkpoint()
                    return 1
                }
                try check(value == nil && early.cancelledCaught, "a scope cancelled before entry did not cancel its body")
                try await expectRuntimeError(.alreadyEntered, "a second entry") { _ = try await early.enter { _ in 1 } }

                let relative = try CancelScope(timeout: .seconds(5))
                try check(relative.deadline == .never, "an unentered relative scope has a deadline")
                try await Runtime.sleep(for: .milliseconds(3))  // the timeout counts from entry, not creation
                let before = runtime.now
                _ = try await relative.enter { scope in
                    let after = runtime.now
                    try check(
                        scope.deadline >= before.advanced(by: .seconds(5)) && scope.deadline <= after.advanced(by: .seconds(5)),
                        "the relative deadline \(scope.deadline) was not set at entry (\(before)…\(after))")
                }
                try await expectRuntimeError(.invalidArgument, "a negative timeout") { _ = try CancelScope(timeout: .seconds(-1)) }
                try await expectRuntimeError(.invalidArgument, "a negative sleep") { try await Runtime.sleep(for: .seconds(-1)) }
                try await expectRuntimeError(.invalidArgument, "a negative moveOnAfter") {
                    _ = try await moveOnAfter(.seconds(-1)) { _ in }
                }
                try await expectRuntimeError(.invalidArgument, "a negative failAfter") {
                    try await failAfter(.seconds(-1)) { _ in }
                }
                // failAfter hands its body the scope, as moveOnAfter does.
                let deadline = try await failAfter(.seconds(30)) { scope in scope.deadline }
                try check(deadline > runtime.now, "failAfter's scope has deadline \(deadline)")
            }
        },

        ConformanceTest(
            "o.shield-changes",
            "turning a shield off wakes a blocked wait now cancelled; turning it on protects clean-up during propagation"
        ) { backend in
            try await backend.run {
                // Off while blocked (trio's test_cancel_shield_abort).
                let steps = Recorder<String>()
                let outer = CancelScope()
                let shield = CancelScope(shield: true)
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        _ = try await outer.enter { _ in
                            _ = try await shield.enter { _ in
                                steps.append("sleeping")
                                do {
                                    try await Runtime.sleep(for: .seconds(3600))
                                } catch is CancellationError {
                                    steps.append("cancelled")
                                    throw CancellationError()
                                }
                            }
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    outer.cancel()
                    try await Runtime.waitAllTasksBlocked()
                    try check(steps.values == ["sleeping"], "the shield let the cancellation through: \(steps.values)")
                    shield.shield = false
                }
                try check(outer.cancelledCaught, "the outer scope did not catch")
                try check(steps.values == ["sleeping", "cancelled"], "turning the shield off did not wake: \(steps.values)")

                // Swift task cancellation alone, hidden by a shield, reaches the wait once the shield comes off.
                let woke = Flag()
                let sleeping = Event()
                let shield2 = CancelScope(shield: true)
                try await withThrowingTaskGroup(of: Void.self) { swiftGroup in
                    swiftGroup.addTask {
                        _ = try await shield2.enter { _ in
                            sleeping.set()
                            do { try await Runtime.sleep(for: .seconds(3600)) } catch is CancellationError { woke.set() }
                        }
                    }
                    // The child runs on the runtime's serial executor: once this wakes, it is parked.
                    try await sleeping.wait()
                    swiftGroup.cancelAll()  // Swift task cancellation only; no scope is cancelled
                    for _ in 0..<10 { await Task.yield() }
                    try check(!woke.isSet, "the shield let task cancellation through")
                    shield2.shield = false
                    try await swiftGroup.waitForAll()
                }
                try check(woke.isSet, "turning the shield off did not deliver the task's cancellation")

                // On while a cancellation propagates (trio's test_unshield_while_cancel_propagating).
                let inner = CancelScope()
                let cleanedUp = Flag()
                let result: Void? = try await withCancelScope { outer in
                    _ = try await inner.enter { inner in
                        outer.cancel()
                        do {
                            try await Runtime.checkpoint()
                        } catch {
                            inner.shield = true
                            try await Runtime.sleep(for: .milliseconds(1))  // clean-up, protected now
                            cleanedUp.set()
                            throw error
                        }
                    }
                }
                try check(result == nil && cleanedUp.isSet, "the clean-up did not run under the new shield")
                try check(!inner.cancelledCaught, "the inner scope caught the outer scope's cancellation")
            }
        },

        ConformanceTest(
            "o.deadline-changes",
            "moving a deadline while a task waits re-arms it, earlier or later; a deadline in the past cancels at once"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let isVirtual = runtime.name == "virtual"
                // Earlier, from another task, while the body sleeps.
                let start = runtime.now
                let scope = CancelScope(deadline: start.advanced(by: .seconds(60)))
                try await Runtime.withTaskGroup { group in
                    try group.startSoon { _ = try await scope.enter { _ in try await Runtime.sleep(for: .seconds(3600)) } }
                    try await Runtime.waitAllTasksBlocked()
                    scope.deadline = runtime.now.advanced(by: .milliseconds(20))
                }
                let took = elapsed(since: start, on: runtime)
                try check(scope.cancelledCaught, "the moved deadline did not cancel")
                try check(took >= .milliseconds(20) && took < .seconds(30), "the moved deadline fired after \(took)")
                if isVirtual { try check(took == .milliseconds(20), "virtual time: fired after \(took), not exactly 20 ms") }

                // Later: the first timer fires early and is re-armed for the new deadline.
                let start2 = runtime.now
                let later: Void? = try await withCancelScope(deadline: start2.advanced(by: .milliseconds(10))) { scope in
                    scope.deadline = start2.advanced(by: .milliseconds(40))
                    try await Runtime.sleep(for: .seconds(3600))
                }
                let took2 = elapsed(since: start2, on: runtime)
                try check(later == nil && took2 >= .milliseconds(40), "a later deadline fired after \(took2)")
                if isVirtual { try check(took2 == .milliseconds(40), "virtual time: fired after \(took2), not exactly 40 ms") }

                // In the past: cancelled at once, and never un-cancelled by a later deadline.
                _ = try await withCancelScope { scope in
                    scope.deadline = runtime.now.advanced(by: .seconds(-1))
                    try check(scope.cancelCalled, "a deadline in the past did not cancel")
                    scope.deadline = .never
                    try check(scope.cancelCalled, "the scope became un-cancelled")
                }
            }
        },

        ConformanceTest(
            "o.effective-deadline",
            "currentEffectiveDeadline is the earliest deadline up to the first shield, distantPast when cancelled"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let base = runtime.now
                try check(Runtime.currentEffectiveDeadline() == .never, "no scope: \(Runtime.currentEffectiveDeadline())")
                _ = try await withCancelScope(deadline: base.advanced(by: .seconds(5))) { outer in
                    _ = try await withCancelScope(deadline: base.advanced(by: .seconds(10))) { inner in
                        try check(Runtime.currentEffectiveDeadline() == base.advanced(by: .seconds(5)), "min of 5 and 10")
                        inner.shield = true
                        try check(Runtime.currentEffectiveDeadline() == base.advanced(by: .seconds(10)), "a shield hides 5")
                        outer.cancel()
                        try check(Runtime.currentEffectiveDeadline() == base.advanced(by: .seconds(10)), "shielded from the cancel")
                        inner.shield = false
                        try check(Runtime.currentEffectiveDeadline() == .distantPast, "cancelled: distantPast")
                    }
                }
                try check(Runtime.currentEffectiveDeadline() == .never, "after the scopes: \(Runtime.currentEffectiveDeadline())")
            }
        },

        ConformanceTest(
            "q.outliving-task-in-timed-scope",
            "a task that outlives its run and then waits inside moveOnAfter / failAfter finishes instead of hanging"
        ) { backend in
            let go = Event()
            let done = Event()
            let outcome = Recorder<String>()
            try await backend.run {
                // Deliberately unstructured: the task must outlive the run. It inherits the run's task-locals
                // (the runtime), and waits for the run to end before it uses them.
                _ = Task(executorPreference: globalConcurrentExecutor) {
                    try? await go.wait()
                    do {
                        let moved: Void? = try await moveOnAfter(.seconds(1)) { _ in
                            try await Runtime.sleep(for: .seconds(30))
                        }
                        try await failAfter(.seconds(1)) { try await Runtime.sleep(for: .seconds(30)) }
                        outcome.append(moved == nil ? "moved on" : "slept")
                    } catch {
                        outcome.append("threw \(error)")
                    }
                    done.set()
                }
            }
            go.set()  // the run has ended: its timers now fire at once, on another thread
            // Outside any runtime an Event is a plain wait; the suite's time limit bounds it.
            try await done.wait()
            try check(outcome.values == ["slept"], "the outliving task: \(outcome.values)")
        },

        ConformanceTest(
            "r.runs-release-memory",
            "when run returns and no task holds it, the runtime, its backend and its executor are freed"
        ) { backend in
            final class WeakBox: @unchecked Sendable {
                // @unchecked: written once inside the run, read after it returned (the run's end orders them).
                weak var runtime: Runtime?
                weak var executor: AnyObject?
            }
            let box = WeakBox()
            try await backend.run {
                let runtime = try Runtime.current
                box.runtime = runtime
                box.executor = runtime.backend.executor as AnyObject
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<10 { try group.startSoon { try await Runtime.sleep(for: .milliseconds(1)) } }
                }
            }
            // Tasks release their executor as they are destroyed, just after they return: allow a moment,
            // waiting on a worker thread of a fresh run (never blocking the caller's thread).
            try await backend.run {
                for _ in 0..<2_000 where box.runtime != nil || box.executor != nil {
                    try await Runtime.runBlocking { _ = usleep(1_000) }
                }
            }
            try check(box.runtime == nil, "the runtime of a finished run is still alive")
            try check(box.executor == nil, "the executor of a finished run is still alive (leaked per run)")
        },
    ]
}
