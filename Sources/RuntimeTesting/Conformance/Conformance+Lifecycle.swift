import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension RuntimeConformance {
    static let lifecycleTests: [ConformanceTest] = [
        ConformanceTest(
            "k.no-leaks",
            "after run returns, no task, timer, fd registration, blocking job or thread of the runtime remains"
        ) { backend in
            let captured = Locked<Runtime?>(nil)
            try await backend.run {
                let runtime = try Runtime.current
                captured.withLock { $0 = runtime }
                let pair = try SocketPair()
                try await Runtime.withTaskGroup { group in
                    for index in 0..<50 {
                        try group.startSoon {
                            _ = try await moveOnAfter(.milliseconds(Int64(index % 7))) { _ in
                                try await Runtime.sleep(for: .seconds(30))
                            }
                            _ = try await Runtime.runBlocking { index }
                        }
                    }
                    try group.startSoon {
                        _ = try await moveOnAfter(.milliseconds(3)) { _ in
                            try await runtime.wait(fd: pair.left, for: .read)
                        }
                    }
                    // A timer left pending by a task that is cancelled.
                    try group.startSoon { try await Runtime.sleep(for: .seconds(3600)) }
                    try await Runtime.sleep(for: .milliseconds(10))
                    group.cancel()
                }
                await pair.close(on: runtime)
            }
            guard let runtime = captured.withLock({ $0 }) else { throw fail("the body did not run") }
            let diagnostics = runtime.backend.diagnostics()
            try check(diagnostics.pendingTimers == 0, "timers left: \(diagnostics)")
            try check(diagnostics.watchedDescriptors == 0, "fd registrations left: \(diagnostics)")
            try check(diagnostics.blockingJobsInFlight == 0, "blocking jobs left: \(diagnostics)")
            try check(diagnostics.ownedThreads == 0, "threads left: \(diagnostics)")
            try check(diagnostics.isClosed, "the backend did not close cleanly: \(diagnostics)")
            try check(runtime.liveTasks == 0, "\(runtime.liveTasks) tasks outlived the run")
        },

        ConformanceTest(
            "k2.after-the-run",
            "a task that outlives its run is not stranded: sleeps end at once, waits fail with closed, forget returns"
        ) { backend in
            let captured = Locked<Runtime?>(nil)
            try await backend.run { captured.withLock { $0 = try? Runtime.current } }
            guard let runtime = captured.withLock({ $0 }) else { throw fail("the body did not run") }
            try await runtime.sleep(for: .seconds(3600))  // returns: the run has ended
            let pair = try SocketPair()
            do {
                try await runtime.wait(fd: pair.left, for: .read)
                throw fail("a readiness wait after the run did not fail")
            } catch let error as RuntimeError {
                try check(error.code == .closed, "a wait after the run gave \(error)")
            }
            await runtime.forget(fd: pair.left)
            let value = try await runtime.runBlocking { 7 }
            try check(value == 7, "blocking work after the run returned \(value)")
            _ = Glibc.close(pair.left)
            _ = Glibc.close(pair.right)
        },

        ConformanceTest(
            "l.many-sleepers",
            "10,000 tasks sleeping pseudo-random deadlines all wake, each in order, none early"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let start = runtime.now
                let early = Gauge()
                let outOfOrder = Gauge()
                let wakes = Gauge()
                var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
                func next() -> Int64 {
                    seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                    return Int64((seed >> 33) % 100_000_000)  // 0..<100 ms in ns
                }
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<10_000 {
                        let deadlines = [next(), next()].sorted().map {
                            start.advanced(by: .nanoseconds($0))
                        }
                        try group.startSoon {
                            var previous = RuntimeInstant(nanoseconds: .min)
                            for deadline in deadlines {
                                try await runtime.sleep(until: deadline)
                                let now = runtime.now
                                if now < deadline { early.increment() }
                                if now < previous { outOfOrder.increment() }
                                previous = now
                                wakes.increment()
                            }
                        }
                    }
                }
                try check(wakes.value == 20_000, "\(wakes.value) of 20,000 sleeps returned")
                try check(early.value == 0, "\(early.value) sleeps returned before their deadline")
                try check(outOfOrder.value == 0, "\(outOfOrder.value) wakes were out of order within a task")
            }
        },

        ConformanceTest(
            "m.external-cancellation",
            "cancelling the Swift task that called run reaches every waiter, but not through a shield"
        ) { backend in
            let results = Recorder<String>()
            let ready = OneShot()
            try await withThrowingTaskGroup(of: Void.self) { outside in
                outside.addTask {
                    do {
                        try await backend.run {
                            let runtime = try Runtime.current
                            let pair = try SocketPair()
                            let event = Event()
                            let (send, receive) = try makeMemoryChannel(of: Int.self)
                            let lock = Lock()
                            try await lock.acquire()
                            let waits: [(String, @Sendable () async throws -> Void)] = [
                                ("sleep", { try await Runtime.sleep(until: .never) }),
                                ("event", { try await event.wait() }),
                                ("channel", { _ = try await receive.receive() }),
                                ("readiness", { try await runtime.wait(fd: pair.left, for: .read) }),
                                ("lock", { try await lock.acquire() }),
                            ]
                            do {
                                try await Runtime.withTaskGroup { group in
                                    for (name, wait) in waits {
                                        try group.startSoon {
                                            do {
                                                try await wait()
                                                results.append("\(name):returned")
                                            } catch is CancellationError {
                                                results.append("\(name):cancelled")
                                            }
                                        }
                                    }
                                    try group.startSoon {
                                        _ = try await withCancelScope(shield: true) { _ in
                                            try await Runtime.sleep(for: .milliseconds(30))
                                            results.append("shielded:finished")
                                        }
                                    }
                                    try await Runtime.sleep(for: .milliseconds(20))
                                    ready.fire()
                                    try await event.wait()
                                }
                            } catch is CancellationError {
                                results.append("group:cancelled")
                            }
                            send.close()
                            await pair.close(on: runtime)
                        }
                    } catch is CancellationError {
                        results.append("run:cancelled")
                    }
                }
                await ready.wait()
                outside.cancelAll()
                try await outside.waitForAll()
            }
            let expected = [
                "channel:cancelled", "event:cancelled", "group:cancelled", "lock:cancelled", "readiness:cancelled",
                "shielded:finished", "sleep:cancelled",
            ]
            try check(results.values.sorted() == expected, "outcomes \(results.values.sorted()), expected \(expected)")
        },
    ]
}

/// A one-shot signal from inside a runtime to a task outside it.
final class OneShot: Sendable {
    private let state = Locked<(fired: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))
    init() {}

    func fire() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.fired = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let fired = state.withLock { state -> Bool in
                if state.fired { return true }
                state.waiter = continuation
                return false
            }
            if fired { continuation.resume() }
        }
    }
}
