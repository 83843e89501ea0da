import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension RuntimeConformance {
    static let ioTests: [ConformanceTest] = [
        ConformanceTest(
            "h.readiness",
            "a read wait wakes when the peer writes; a cancelled wait can be repeated; busy and closed errors"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let pair = try SocketPair()

                // Wakes when the peer writes.
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        try await Runtime.sleep(for: .milliseconds(10))
                        try pair.send(7, from: pair.right)
                    }
                    let events = try await runtime.wait(fd: pair.left, for: .read)
                    try check(events.contains(.read), "woke with \(events), expected read")
                    try check(pair.receive(on: pair.left) == 7, "read the wrong byte")
                }

                // A cancelled wait unregisters: the fd can be waited on again at once.
                let cancelled = try await moveOnAfter(.milliseconds(10)) { _ in
                    try await runtime.wait(fd: pair.left, for: .read)
                }
                try check(cancelled == nil, "the wait was not cancelled")
                try pair.send(8, from: pair.right)
                try await runtime.wait(fd: pair.left, for: .read)
                try check(pair.receive(on: pair.left) == 8, "read the wrong byte after a cancelled wait")

                // Both directions at once: a writable socket is ready for write.
                let both = try await runtime.wait(fd: pair.left, for: [.read, .write])
                try check(both.contains(.write), "a [.read, .write] wait on a writable socket woke with \(both)")

                // A second waiter in the same direction is refused; the other direction is free.
                try await Runtime.withTaskGroup { group in
                    let parked = Event()
                    try group.startSoon {
                        parked.set()
                        _ = try await runtime.wait(fd: pair.left, for: .read)
                    }
                    try await parked.wait()
                    try await Runtime.waitAllTasksBlocked()
                    do {
                        try await runtime.wait(fd: pair.left, for: .read)
                        throw fail("a second reader was not refused")
                    } catch let error as RuntimeError {
                        try check(error.code == .busy, "second reader got \(error), expected busy")
                    }
                    let writable = try await runtime.wait(fd: pair.left, for: .write)
                    try check(writable.contains(.write), "the write direction was not free")
                    group.cancel()
                }

                // Forgetting the fd wakes its waiter with `closed`.
                let codes = Recorder<RuntimeError.Code>()
                try await Runtime.withTaskGroup { group in
                    let parked = Event()
                    try group.startSoon {
                        parked.set()
                        do {
                            try await runtime.wait(fd: pair.left, for: .read)
                        } catch let error as RuntimeError {
                            codes.append(error.code)
                        }
                    }
                    try await parked.wait()
                    try await Runtime.waitAllTasksBlocked()
                    await runtime.forget(fd: pair.left)
                }
                try check(codes.values == [.closed], "forget gave the waiter \(codes.values), expected [closed]")

                // The fd is still open: it can be watched again after forget.
                try pair.send(9, from: pair.right)
                try await runtime.wait(fd: pair.left, for: .read)
                try check(pair.receive(on: pair.left) == 9, "read the wrong byte after forget")
                await pair.close(on: runtime)

                // Bad arguments are typed errors, not hangs or huge allocations.
                do {
                    try await runtime.wait(fd: 2_000_000_000, for: .read)
                    throw fail("an absurd fd was accepted")
                } catch let error as RuntimeError {
                    try check(error.code == .badDescriptor, "an absurd fd gave \(error)")
                }
                do {
                    try await runtime.wait(fd: pair.right, for: [])
                    throw fail("a wait for no events was accepted")
                } catch let error as RuntimeError {
                    try check(error.code == .invalidArgument, "empty events gave \(error)")
                }

                // A closed fd is refused, not waited on forever. (Not pair.left itself: a test running in
                // parallel may reuse its number at once. An fd at RLIMIT_NOFILE can never be open.)
                var limit = rlimit()
                getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
                let neverOpen = Int32(clamping: limit.rlim_cur)
                do {
                    try await runtime.wait(fd: neverOpen, for: .read)
                    throw fail("a wait on a closed fd did not fail")
                } catch let error as RuntimeError {
                    try check(error.code == .badDescriptor, "a closed fd gave \(error)")
                }
            }
        },

        ConformanceTest(
            "h2.readiness-ping-pong",
            "two tasks exchange 2,000 bytes over a socketpair with non-blocking IO and readiness waits"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let pair = try SocketPair()
                let rounds = 2_000
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        for _ in 0..<rounds {
                            var byte = pair.receive(on: pair.right)
                            while byte == nil {
                                try await runtime.wait(fd: pair.right, for: .read)
                                byte = pair.receive(on: pair.right)
                            }
                            try pair.send(byte ?? 0, from: pair.right)
                        }
                    }
                    for round in 0..<rounds {
                        try pair.send(UInt8(truncatingIfNeeded: round), from: pair.left)
                        var byte = pair.receive(on: pair.left)
                        while byte == nil {
                            try await runtime.wait(fd: pair.left, for: .read)
                            byte = pair.receive(on: pair.left)
                        }
                        try check(byte == UInt8(truncatingIfNeeded: round), "round \(round) echoed \(byte ?? 0)")
                    }
                }
                await pair.close(on: runtime)
            }
        },
        ConformanceTest(
            "h3.peer-reset",
            "after a peer resets a TCP connection, every readiness wait on the socket still wakes (no stale arming)"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let (client, server) = try tcpPair()
                // Reset, not an orderly close: SO_LINGER 0 makes close() send RST.
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(server, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
                _ = Glibc.close(server)
                var byte: UInt8 = 0
                for attempt in 1...3 {
                    let woke: IOEvents? = try await moveOnAfter(.seconds(5)) { _ in
                        try await runtime.wait(fd: client, for: .read)
                    }
                    try check(woke != nil, "wait \(attempt) on a reset socket did not wake")
                    _ = read(client, &byte, 1)  // ECONNRESET, then end of file
                }
                await runtime.forget(fd: client)
                _ = Glibc.close(client)
            }
        },
    ]

    static let blockingTests: [ConformanceTest] = [
        ConformanceTest(
            "i.blocking-all-tokens",
            "as many blocking closures as the default limiter has tokens run at once: ones that wait on one another all finish"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let count = runtime.defaultBlockingLimiter.totalTokens
                let arrived = Gauge()
                let waiting = Gauge()
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<count {
                        try group.startSoon {
                            // Each waits, on its thread, until all have started: with fewer threads than tokens,
                            // the last ones would queue behind the first, which wait for them (10 s, then fail).
                            let met = try await runtime.runBlocking { () -> Bool in
                                arrived.increment()
                                let deadline = RuntimeInstant.monotonicNow().advanced(by: .seconds(10))
                                while arrived.value < count {
                                    if RuntimeInstant.monotonicNow() >= deadline { return false }
                                    usleep(500)
                                }
                                waiting.increment()
                                return true
                            }
                            try check(met, "\(arrived.value) of \(count) blocking closures started within 10 s")
                        }
                    }
                }
                try check(waiting.value == count, "\(waiting.value) of \(count) blocking closures met")
            }
        },
        ConformanceTest(
            "i.blocking-work",
            "blocking work runs off the executor, a limiter bounds it, and cancellation follows the chosen policy"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let offExecutor = try await Runtime.runBlocking { !runtime.backend.isOnExecutor }
                try check(offExecutor, "blocking work ran on the executor")
                let value = try await Runtime.runBlocking { () throws -> Int in 6 * 7 }
                try check(value == 42, "runBlocking returned \(value)")
                do {
                    _ = try await Runtime.runBlocking { () throws -> Int in throw Boom(id: 9) }
                    throw fail("runBlocking did not rethrow")
                } catch let error as Boom {
                    try check(error.id == 9, "runBlocking threw \(error)")
                }

                // The limiter bounds concurrency.
                let limiter = try CapacityLimiter(totalTokens: 2)
                let gauge = Gauge()
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<6 {
                        try group.startSoon {
                            try await runtime.runBlocking(limiter: limiter) {
                                gauge.increment()
                                usleep(10_000)
                                gauge.decrement()
                            }
                        }
                    }
                }
                try check(gauge.peak <= 2, "\(gauge.peak) closures ran at once under a limiter of 2")
                try check(limiter.borrowedTokens == 0, "the limiter kept \(limiter.borrowedTokens) tokens")

                // Cancelled before it starts: the closure never runs.
                let ran = Flag()
                _ = try await withCancelScope { scope in
                    scope.cancel()
                    _ = try? await runtime.runBlocking { ran.set() }
                }
                try check(!ran.isSet, "a closure ran although its caller was already cancelled")

                // Default: cancellation while it runs waits for it and keeps its result.
                let kept: Int? = try await withCancelScope { scope in
                    let result = try await runtime.runBlocking { () -> Int in
                        scope.cancel()
                        usleep(5_000)
                        return 7
                    }
                    try check(result == 7, "the result of a cancelled call was lost")
                    try await Runtime.checkpoint()
                    throw fail("the cancellation did not reach the next checkpoint")
                }
                try check(kept == nil, "the scope did not catch")

                // Interrupt: the hook is called and the closure's own outcome is returned.
                let interrupted = Flag()
                let interruptedResult: Int? = try await withCancelScope { scope in
                    try await runtime.runBlocking(onCancel: .interrupt { interrupted.set() }) { () -> Int in
                        scope.cancel()
                        while !interrupted.isSet { usleep(500) }
                        return 9
                    }
                }
                try check(interrupted.isSet, "the interrupt hook was not called")
                try check(interruptedResult == 9, "interrupted call returned \(String(describing: interruptedResult))")

                // Abandon: returns at once; the closure runs on and keeps its token until it ends.
                let abandonedFinished = Flag()
                let mayFinish = Flag()
                let abandonLimiter = try CapacityLimiter(totalTokens: 1)
                let abandoned: Int? = try await withCancelScope { scope in
                    try await runtime.runBlocking(limiter: abandonLimiter, onCancel: .abandon) { () -> Int in
                        scope.cancel()
                        while !mayFinish.isSet { usleep(500) }
                        abandonedFinished.set()
                        return 1
                    }
                }
                try check(abandoned == nil, "an abandoned call did not throw CancellationError")
                try check(!abandonedFinished.isSet, "abandon waited for the closure")
                try check(!(try abandonLimiter.tryAcquire()), "the abandoned closure gave its token back while running")
                mayFinish.set()
                try await abandonLimiter.acquire()  // granted only once the abandoned closure ended
                try check(abandonedFinished.isSet, "the abandoned closure's token came back before it ended")
                try abandonLimiter.release()
            }
        },
        ConformanceTest(
            "i2.completion",
            "withCompletion waits for a result from another thread, under each cancellation policy"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                @Sendable func later(_ body: @escaping @Sendable () -> Void) {
                    runtime.backend.runBlocking {
                        usleep(2_000)
                        body()
                    }
                }
                let value: Int = try await Runtime.withCompletion { completion in
                    later { completion.resume(returning: 5) }
                }
                try check(value == 5, "withCompletion returned \(value)")
                do {
                    let _: Int = try await Runtime.withCompletion { completion in
                        later { completion.resume(throwing: Boom(id: 4)) }
                    }
                    throw fail("withCompletion did not throw the delivered error")
                } catch let error as Boom {
                    try check(error.id == 4, "threw \(error)")
                }
                // Already cancelled: start is not called.
                let started = Flag()
                _ = try await withCancelScope { scope in
                    scope.cancel()
                    let _: Int? = try? await Runtime.withCompletion { _ in started.set() }
                }
                try check(!started.isSet, "start ran although the caller was cancelled")
                // Abandon: returns at once; the late result is ignored.
                let lateAccepted = Recorder<Bool>()
                let waitEnded = Flag()
                let abandoned: Int? = try await withCancelScope { scope in
                    try await Runtime.withCompletion(onCancel: .abandon) { completion in
                        scope.cancel()
                        // Late for sure: only once the wait has given up (a fixed delay can lose the race on a
                        // loaded machine, and a value delivered in time is rightly taken).
                        later {
                            while !waitEnded.isSet { usleep(200) }
                            lateAccepted.append(completion.resume(returning: 1))
                        }
                    }
                }
                waitEnded.set()
                try check(abandoned == nil, "an abandoned wait returned a value")
                // Interrupt: the hook runs, the wait goes on, the delivered outcome comes back.
                let hook = Flag()
                let interrupted: Int? = try await withCancelScope { scope in
                    try await Runtime.withCompletion(onCancel: .interrupt { hook.set() }) { completion in
                        later {
                            scope.cancel()
                            while !hook.isSet { usleep(200) }
                            completion.resume(returning: 3)
                        }
                    }
                }
                try check(hook.isSet && interrupted == 3, "interrupt: hook \(hook.isSet), value \(String(describing: interrupted))")
                // Outside work holds the clock still: a virtual clock must not jump while a thread the runtime
                // does not own computes the awaited result (here a sibling's one-hour sleep would end).
                let outside = BlockingThreadPool(maximumThreads: 1)
                let siblingWoke = Flag()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        try await Runtime.sleep(for: .seconds(3600))
                        siblingWoke.set()
                    }
                    let slow: Int = try await Runtime.withCompletion { completion in
                        outside.submit {
                            usleep(30_000)
                            completion.resume(returning: 9)
                        }
                    }
                    try check(slow == 9 && !siblingWoke.isSet, "the clock moved while outside work was in flight")
                    group.cancel()
                }
                outside.shutdown()
                // Wait for the abandoned delivery to happen before the run ends.
                for _ in 0..<1_000 where lateAccepted.count == 0 { _ = try await Runtime.runBlocking { usleep(1_000) } }
                try check(lateAccepted.values == [false], "a late resume after abandon was accepted")
            }
        },
    ]
}

/// A connected pair of non-blocking TCP sockets on loopback (a socketpair cannot be reset).
func tcpPair() throws(ConformanceFailure) -> (client: Int32, server: Int32) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard listener >= 0 else { throw fail("socket failed: errno \(errno)") }
    defer { _ = Glibc.close(listener) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { raw in
            bind(listener, raw, length) == 0 && listen(listener, 1) == 0 && getsockname(listener, raw, &length) == 0
        }
    }
    guard bound else { throw fail("bind/listen on loopback failed: errno \(errno)") }
    let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, length) == 0 }
    }
    guard client >= 0, connected else { throw fail("connect on loopback failed: errno \(errno)") }
    let server = accept(listener, nil, nil)
    guard server >= 0 else { throw fail("accept failed: errno \(errno)") }
    _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
    return (client, server)
}
