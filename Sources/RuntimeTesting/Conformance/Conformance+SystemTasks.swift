import Runtime
import Synchronization

extension RuntimeConformance {
    static let systemTaskTests: [ConformanceTest] = [
        ConformanceTest(
            "l.system-tasks",
            "a system task outlives its caller's cancellation; the run's end cancels and awaits it, even one not yet started; later ones do not start"
        ) { backend in
            let outcome = Locked<(started: Bool, longEnded: Bool, lateRan: Bool, runtime: Runtime?)>((false, false, false, nil))
            let begun = RuntimeInstant.monotonicNow()
            try await backend.run {
                let runtime = try Runtime.current
                outcome.withLock { $0.runtime = runtime }
                let started = Event()
                // Started from a scope that is cancelled already: the caller's cancellation does not reach it.
                _ = try await withCancelScope { scope in
                    scope.cancel()
                    let accepted = runtime.startSystemTask {
                        outcome.withLock { $0.started = true }
                        started.set()
                        // Cancelled at the run's end (on virtual time the idle loop may jump the clock to its end
                        // first): either way it has ended before the run returns.
                        try? await Runtime.sleep(for: .seconds(3600))
                        outcome.withLock { $0.longEnded = true }
                    }
                    try check(accepted, "a system task was refused during the run")
                }
                try await started.wait()
                try check(runtime.systemTaskCount == 1, "systemTaskCount \(runtime.systemTaskCount), expected 1")
                // Started just before the body returns: it may not have run yet when the run begins to end, and
                // must still run (cancelled, or not yet) before the run returns.
                runtime.startSystemTask {
                    try? await Runtime.checkpoint()
                    outcome.withLock { $0.lateRan = true }
                }
            }
            let seconds = Double(begun.duration(to: .monotonicNow()).components.seconds)
            let result = outcome.withLock { $0 }
            try check(result.started, "the system task did not run")
            try check(result.longEnded, "the run ended without cancelling and awaiting its system task")
            try check(result.lateRan, "a system task started as the body returned had not run when the run ended")
            // Far below the hour the system task sleeps. Not tighter: the run's end resumes on the caller's
            // executor (Swift's global pool), where a loaded parallel suite's synchronous tests can keep it
            // waiting for seconds — measured up to 22 s with four backends' suites at once on 2 cores.
            try check(seconds < 60, "the run took \(seconds) s to end (the system task sleeps for an hour)")
            guard let runtime = result.runtime else { throw fail("the body did not run") }
            try check(runtime.systemTaskCount == 0, "\(runtime.systemTaskCount) system tasks outlived the run")
            try check(!runtime.startSystemTask {}, "a system task started after the run ended")
        },

        ConformanceTest(
            "o.current-deadline",
            "currentDeadline is the earliest deadline up to the first shield, kept once the code is cancelled"
        ) { backend in
            try await backend.run {
                let base = try Runtime.current.now
                try check(Runtime.currentDeadline() == .never, "no scope: \(Runtime.currentDeadline())")
                _ = try await withCancelScope(deadline: base.advanced(by: .seconds(5))) { outer in
                    outer.cancel()
                    try check(Runtime.currentEffectiveDeadline() == .distantPast, "cancelled: effective deadline not distantPast")
                    try check(Runtime.currentDeadline() == base.advanced(by: .seconds(5)), "cancelled: \(Runtime.currentDeadline())")
                    _ = try await withCancelScope(deadline: base.advanced(by: .seconds(9)), shield: true) { _ in
                        try check(Runtime.currentDeadline() == base.advanced(by: .seconds(9)), "a shield hides the 5 s deadline")
                    }
                }
            }
        },
    ]
}
