import Runtime
import Synchronization

extension RuntimeConformance {
    static let cancelScopeTests: [ConformanceTest] = [
        ConformanceTest(
            "d.deadline-interrupts-waits",
            "a deadline interrupts sleep, a readiness wait, an Event wait and a channel receive"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let pair = try SocketPair()
                let event = Event()
                let (send, receive) = try makeMemoryChannel(of: Int.self)
                let waits: [(String, () async throws -> Void)] = [
                    ("sleep", { try await Runtime.sleep(for: .seconds(30)) }),
                    ("readiness", { try await runtime.wait(fd: pair.left, for: .read) }),
                    ("event", { try await event.wait() }),
                    ("channel", { _ = try await receive.receive() }),
                ]
                for (name, wait) in waits {
                    let start = runtime.now
                    var seen: CancelScope?
                    let result: Int? = try await moveOnAfter(.milliseconds(20)) { scope in
                        seen = scope
                        try await wait()
                        return 1
                    }
                    let took = elapsed(since: start, on: runtime)
                    try check(result == nil, "\(name): the wait was not interrupted")
                    try check(seen?.cancelledCaught == true, "\(name): cancelledCaught is false")
                    try check(seen?.cancelCalled == true, "\(name): cancelCalled is false")
                    try check(took >= .milliseconds(20), "\(name): interrupted early, after \(took)")
                    try check(took < .seconds(10), "\(name): interrupted late, after \(took)")
                }
                send.close()
                await pair.close(on: runtime)
            }
        },

        ConformanceTest(
            "d2.timeouts",
            "failAfter throws TimeoutError when the deadline passes; the deadline forms behave the same"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                do {
                    try await failAfter(.milliseconds(10)) { try await Runtime.sleep(for: .seconds(30)) }
                    throw fail("failAfter did not throw")
                } catch is TimeoutError {}
                let value = try await failAfter(.seconds(30)) { () async throws -> Int in
                    try await Runtime.sleep(for: .milliseconds(1))
                    return 5
                }
                try check(value == 5, "failAfter returned \(value)")
                let deadline = runtime.now.advanced(by: .milliseconds(10))
                do {
                    try await fail(at: deadline) { try await Runtime.sleep(for: .seconds(30)) }
                    throw fail("fail(at:) did not throw")
                } catch let error as TimeoutError {
                    try check(error.deadline == deadline, "TimeoutError carries \(error.deadline)")
                }
                let moved: Void? = try await moveOn(at: runtime.now.advanced(by: .milliseconds(10))) { _ in
                    try await Runtime.sleep(for: .seconds(30))
                }
                try check(moved == nil, "moveOn(at:) did not move on")
                try check(runtime.now >= deadline, "moved on before the deadline")
            }
        },

        ConformanceTest(
            "e.nested-scopes",
            "the outer deadline fires first: the outer scope catches it, the inner does not"
        ) { backend in
            try await backend.run {
                var outer: CancelScope?
                var inner: CancelScope?
                let result: Int? = try await moveOnAfter(.milliseconds(20)) { scope in
                    outer = scope
                    _ = try await moveOnAfter(.seconds(10)) { scope in
                        inner = scope
                        try await Runtime.sleep(for: .seconds(30))
                    }
                    throw fail("the inner scope swallowed the outer scope's cancellation")
                }
                try check(result == nil, "the outer scope did not catch")
                try check(outer?.cancelledCaught == true, "outer.cancelledCaught is false")
                try check(inner?.cancelledCaught == false, "inner.cancelledCaught is true")
                try check(inner?.cancelCalled == false, "the inner scope was cancelled itself")

                // Both cancelled: the outer one catches.
                var inner2: CancelScope?
                var outer2: CancelScope?
                _ = try await withCancelScope { scope in
                    outer2 = scope
                    _ = try await withCancelScope { innerScope in
                        inner2 = innerScope
                        scope.cancel()
                        innerScope.cancel()
                        try await Runtime.checkpoint()
                    }
                }
                try check(outer2?.cancelledCaught == true, "the outer of two cancelled scopes did not catch")
                try check(inner2?.cancelledCaught == false, "the inner of two cancelled scopes caught")
            }
        },

        ConformanceTest(
            "f.level-triggered",
            "after cancellation every further runtime wait in the scope throws until it exits"
        ) { backend in
            try await backend.run {
                let event = Event()
                let lock = Lock()
                try await lock.acquire()
                var failures: [String] = []
                var seen: CancelScope?
                let result: Int? = try await withCancelScope { scope in
                    seen = scope
                    scope.cancel()
                    let waits: [(String, () async throws -> Void)] = [
                        ("checkpoint", { try await Runtime.checkpoint() }),
                        ("sleep", { try await Runtime.sleep(for: .milliseconds(1)) }),
                        ("event", { try await event.wait() }),
                        ("lock", { try await lock.acquire() }),
                        ("checkpoint again", { try await Runtime.checkpoint() }),
                    ]
                    for (name, wait) in waits {
                        do { try await wait() } catch is CancellationError { failures.append(name) }
                    }
                    return 1
                }
                try lock.release()
                try check(failures.count == 5, "only \(failures) threw in a cancelled scope")
                try check(result == 1, "a body that returned normally lost its value")
                try check(seen?.cancelCalled == true && seen?.cancelledCaught == false, "scope flags are wrong")
                // Outside the scope, waits work again.
                try await Runtime.checkpoint()
            }
        },

        ConformanceTest(
            "g.shield",
            "a shielded scope finishes its work while the outer scope is cancelled; then the outer throws"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let finished = Flag()
                let reachedAfterShield = Flag()
                let start = runtime.now
                let result: Int? = try await moveOnAfter(.milliseconds(10)) { _ in
                    _ = try await withCancelScope(shield: true) { _ in
                        try await Runtime.sleep(for: .milliseconds(50))
                        finished.set()
                    }
                    try await Runtime.checkpoint()
                    reachedAfterShield.set()
                    return 1
                }
                try check(finished.isSet, "the shielded work did not finish")
                try check(!reachedAfterShield.isSet, "the outer scope did not throw after the shield")
                try check(result == nil, "the outer scope did not catch")
                try check(elapsed(since: start, on: runtime) >= .milliseconds(50), "the shield ended early")

                // A shield's own deadline still works inside a cancelled scope.
                _ = try await withCancelScope { outer in
                    outer.cancel()
                    let inner: Void? = try await withCancelScope(deadline: runtime.now.advanced(by: .milliseconds(5)), shield: true) {
                        _ in try await Runtime.sleep(for: .seconds(30))
                    }
                    try check(inner == nil, "the shield's own deadline did not fire")
                }

                // A shield protects a group child from its group's cancellation.
                let protectedFinished = Flag()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        _ = try await withCancelScope(shield: true) { _ in
                            try await Runtime.sleep(for: .milliseconds(20))
                            protectedFinished.set()
                        }
                    }
                    try await Runtime.sleep(for: .milliseconds(2))
                    group.cancel()
                }
                try check(protectedFinished.isSet, "the shield in a cancelled group's task did not finish")
            }
        },

        ConformanceTest(
            "g2.deadline-changes-and-cancel",
            "a deadline moved while the scope runs re-arms blocked waits; cancel() from another task wakes them"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                // Shortened by another task while the body is blocked.
                var start = runtime.now
                let shortened: Int? = try await withCancelScope(deadline: runtime.now.advanced(by: .seconds(30))) {
                    scope in
                    try await Runtime.withTaskGroup { group in
                        try group.startSoon {
                            _ = try await withCancelScope(shield: true) { _ in
                                try await Runtime.sleep(for: .milliseconds(5))
                                scope.deadline = runtime.now.advanced(by: .milliseconds(10))
                            }
                        }
                        try await Runtime.sleep(for: .seconds(20))
                    }
                    return 1
                }
                var took = elapsed(since: start, on: runtime)
                try check(shortened == nil, "a shortened deadline did not fire")
                try check(took >= .milliseconds(15) && took < .seconds(10), "shortened deadline fired after \(took)")

                // Extended before it fires: the body completes.
                let extended: Int? = try await moveOnAfter(.milliseconds(10)) { scope in
                    scope.deadline = runtime.now.advanced(by: .seconds(30))
                    try await Runtime.sleep(for: .milliseconds(30))
                    return 2
                }
                try check(extended == 2, "an extended deadline still fired")

                // A deadline in the past cancels at once.
                let past: Int? = try await withCancelScope { scope in
                    scope.deadline = runtime.now.advanced(by: .seconds(-1))
                    try await Runtime.sleep(for: .seconds(30))
                    return 3
                }
                try check(past == nil, "a deadline in the past did not cancel")

                // cancel() from another task.
                start = runtime.now
                let scopeBox = Locked<CancelScope?>(nil)
                let event = Event()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        _ = try await withCancelScope { scope in
                            scopeBox.withLock { $0 = scope }
                            event.set()
                            try await Runtime.sleep(for: .seconds(30))
                        }
                    }
                    try await event.wait()
                    scopeBox.withLock { $0 }?.cancel()
                }
                took = elapsed(since: start, on: runtime)
                try check(took < .seconds(10), "cancel() from another task did not wake the sleeper")
                try check(scopeBox.withLock { $0 }?.cancelledCaught == true, "the cancelled scope did not catch")
            }
        },

        ConformanceTest(
            "g3.foreign-awaits",
            "a scope does not interrupt a foreign await by itself; Runtime.interruptible makes its deadline do so"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                // A foreign await: an AsyncStream that never yields ends only on Swift task cancellation.
                let start = runtime.now
                let interrupted: Int? = try await moveOnAfter(.milliseconds(20)) { _ in
                    try await Runtime.interruptible { () async -> Int in
                        let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
                        var count = 0
                        for await _ in stream { count += 1 }
                        continuation.finish()
                        return count
                    }
                }
                let took = elapsed(since: start, on: runtime)
                try check(interrupted == nil, "the foreign await was not interrupted")
                try check(took >= .milliseconds(20) && took < .seconds(10), "interrupted after \(took)")

                // The value comes back when nothing cancels it.
                let value = try await Runtime.interruptible { () async -> Int in 41 + 1 }
                try check(value == 42, "interruptible returned \(value)")

                // A plain scope only marks itself: the foreign await finishes, the next runtime wait throws.
                let (stream, continuation) = AsyncStream.makeStream(of: Int.self)
                let reachedCheckpoint = Flag()
                let plain: Int? = try await withCancelScope { scope in
                    scope.cancel()
                    continuation.yield(1)
                    continuation.finish()
                    var received = 0
                    for await value in stream { received += value }
                    try check(received == 1, "the foreign await saw \(received)")
                    reachedCheckpoint.set()
                    try await Runtime.checkpoint()
                    return received
                }
                try check(reachedCheckpoint.isSet && plain == nil, "the next runtime wait did not throw")
            }
        },
    ]
}
