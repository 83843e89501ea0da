import Runtime
import Synchronization

extension RuntimeConformance {
    static let primitiveTests: [ConformanceTest] = [
        ConformanceTest("j.lock", "a Lock excludes 1,000 contending tasks and serves them all") { backend in
            try await backend.run {
                let lock = Lock()
                let gauge = Gauge()
                let counter = Locked(0)
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<1_000 {
                        try group.startSoon {
                            try await lock.withLock {
                                gauge.increment()
                                let seen = counter.withLock { $0 }
                                try await Runtime.checkpoint()
                                counter.withLock { $0 = seen + 1 }
                                gauge.decrement()
                            }
                        }
                    }
                }
                try check(gauge.peak == 1, "\(gauge.peak) tasks held the lock at once")
                try check(counter.withLock { $0 } == 1_000, "lost updates: \(counter.withLock { $0 })")
                try check(!lock.isLocked, "the lock is still held")
                do {
                    try lock.release()
                    throw fail("releasing a free lock did not throw")
                } catch let error as RuntimeError {
                    try check(error.code == .notHeld, "release threw \(error)")
                }
            }
        },

        ConformanceTest("j.semaphore-limiter", "a Semaphore and a CapacityLimiter bound concurrency") { backend in
            try await backend.run {
                let semaphore = try Semaphore(initialValue: 3)
                let limiter = try CapacityLimiter(totalTokens: 2)
                let semaphoreGauge = Gauge()
                let limiterGauge = Gauge()
                let semaphoreDone = Gauge()
                let limiterDone = Gauge()
                // Each holder keeps its permit until as many tasks hold one as the bound allows (or as are
                // left): a peak below the bound is then the primitive's fault, never a slow machine's, on
                // which a holder sleeping a fixed moment could leave before the next one came in.
                @Sendable func hold(_ gauge: Gauge, bound: Int, done: Gauge) async throws {
                    gauge.increment()
                    while gauge.value < min(bound, 20 - done.value) { try await Runtime.sleep(for: .milliseconds(1)) }
                    gauge.decrement()
                    done.increment()
                }
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<20 {
                        try group.startSoon {
                            try await semaphore.withPermit { try await hold(semaphoreGauge, bound: 3, done: semaphoreDone) }
                            try await limiter.withToken { try await hold(limiterGauge, bound: 2, done: limiterDone) }
                        }
                    }
                }
                try check(semaphoreGauge.peak == 3, "semaphore of 3 allowed \(semaphoreGauge.peak)")
                try check(limiterGauge.peak == 2, "limiter of 2 allowed \(limiterGauge.peak)")
                try check(semaphore.value == 3 && limiter.availableTokens == 2, "permits were not all returned")

                // Raising a limiter's size lends the new token to the waiter at once.
                let a = CapacityLimiter.Borrower("a")
                let b = CapacityLimiter.Borrower("b")
                try await limiter.acquire(onBehalfOf: a)
                try await limiter.acquire(onBehalfOf: b)
                try await Runtime.withTaskGroup { group in
                    try group.startSoon { try await limiter.acquire() }
                    try await Runtime.waitAllTasksBlocked()
                    try check(limiter.borrowedTokens == 2, "a third token was lent")
                    try limiter.setTotalTokens(3)
                    try check(limiter.borrowedTokens == 3, "raising totalTokens did not lend to the waiter at once")
                }
                try check(limiter.borrowedTokens == 3, "raising totalTokens did not wake the waiter")

                // Lowering below what is borrowed: borrowers keep their tokens, and returned tokens pay the
                // difference before any waiter gets one.
                let debtor = try CapacityLimiter(totalTokens: 2)
                try await debtor.acquire(onBehalfOf: a)
                try await debtor.acquire(onBehalfOf: b)
                try debtor.setTotalTokens(1)
                let woke = Flag()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        try await debtor.acquire()
                        woke.set()
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try debtor.setTotalTokens(2)
                    try await Runtime.waitAllTasksBlocked()
                    try check(!woke.isSet, "a waiter got a token while 2 of 2 were borrowed")
                    try debtor.release(onBehalfOf: a)
                }
                try check(woke.isSet && debtor.borrowedTokens == 2, "the waiter did not get the returned token")
                try debtor.setTotalTokens(Int.max)  // "unbounded": must not loop per token
                try check(debtor.availableTokens == Int.max - 2, "availableTokens is \(debtor.availableTokens)")
            }
        },

        ConformanceTest("j.condition", "Condition.notify wakes one waiter, notifyAll the rest") { backend in
            try await backend.run {
                let condition = Condition()
                let waiting = Gauge()
                let woken = Gauge()
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<5 {
                        try group.startSoon {
                            try await condition.withLock {
                                waiting.increment()
                                try await condition.wait()
                                woken.increment()
                            }
                        }
                    }
                    // Deterministic: every task is blocked in wait() once this returns.
                    try await Runtime.waitAllTasksBlocked()
                    try check(waiting.value == 5 && woken.value == 0, "waiters woke without a notification")
                    try await condition.withLock { try condition.notify() }
                    try await Runtime.waitAllTasksBlocked()
                    try check(woken.value == 1, "notify() woke \(woken.value) waiters")
                    try await condition.withLock { try condition.notifyAll() }
                }
                try check(woken.value == 5, "notifyAll() left waiters asleep: \(woken.value) of 5 woke")
                try check(!condition.lock.isLocked, "the condition's lock is still held")
            }
        },

        ConformanceTest(
            "j.channel",
            "a channel blocks the sender at capacity, keeps order, ends when senders close, breaks when receivers do"
        ) { backend in
            try await backend.run {
                let (send, receive) = try makeMemoryChannel(of: Int.self, bufferSize: 2)
                let sent = Gauge()
                var received: [Int] = []
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        defer { send.close() }
                        for value in 0..<5 {
                            try await send.send(value)
                            sent.increment()
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try check(sent.value == 2, "the sender got past a full buffer: \(sent.value) sent")
                    received.append(try await receive.receive())
                    try await Runtime.waitAllTasksBlocked()
                    try check(sent.value == 3, "receiving did not unblock exactly one send: \(sent.value)")
                    for try await value in receive { received.append(value) }
                }
                try check(received == [0, 1, 2, 3, 4], "received \(received)")

                // Unbuffered: a send waits for a receiver.
                let (send0, receive0) = try makeMemoryChannel(of: String.self)
                do {
                    try send0.sendNowait("x")
                    throw fail("sendNowait on a channel without receivers waiting did not throw")
                } catch let error as RuntimeError {
                    try check(error.code == .wouldBlock, "sendNowait threw \(error)")
                }
                let clone = try receive0.clone()
                receive0.close()
                do {
                    _ = try await receive0.receive()
                    throw fail("a closed receive end still received")
                } catch let error as RuntimeError {
                    try check(error.code == .closedResource, "closed end gave \(error)")
                }
                clone.close()
                do {
                    try await send0.send("y")
                    throw fail("send with every receiver closed did not throw")
                } catch let error as RuntimeError {
                    try check(error.code == .brokenResource, "send gave \(error)")
                }

                // Closing the last sender wakes a waiting receiver with endOfStream.
                let (send1, receive1) = try makeMemoryChannel(of: Int.self)
                let codes = Recorder<RuntimeError.Code>()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        do { _ = try await receive1.receive() } catch let error as RuntimeError { codes.append(error.code) }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    let extra = try send1.clone()
                    send1.close()
                    try await Runtime.waitAllTasksBlocked()
                    try check(codes.count == 0, "the receiver ended while a cloned sender was open")
                    extra.close()
                }
                try check(codes.values == [.endOfStream], "the receiver got \(codes.values)")

                // A cancelled send delivers nothing; a cancelled receive loses nothing.
                let (send2, receive2) = try makeMemoryChannel(of: Int.self)
                let cancelledSend: Void? = try await moveOnAfter(.milliseconds(2)) { _ in try await send2.send(1) }
                try check(cancelledSend == nil, "an unbuffered send without receivers completed")
                do {
                    _ = try receive2.receiveNowait()
                    throw fail("a cancelled send was delivered")
                } catch let error as RuntimeError {
                    try check(error.code == .wouldBlock, "receiveNowait gave \(error)")
                }
                send2.close()
                receive2.close()

                // Closing the receive end wakes a task blocked on it.
                let (send3, receive3) = try makeMemoryChannel(of: Int.self)
                let receiveCodes = Recorder<RuntimeError.Code>()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        do { _ = try await receive3.receive() } catch let error as RuntimeError {
                            receiveCodes.append(error.code)
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    receive3.close()
                }
                try check(receiveCodes.values == [.closedResource], "a blocked receiver got \(receiveCodes.values)")
                send3.close()

                // An element holding an end of its own channel: dropping it on close must not deadlock.
                let (send4, receive4) = try makeMemoryChannel(of: MemorySendChannel<Int>.self, bufferSize: 1)
                let (inner, _) = try makeMemoryChannel(of: Int.self)
                try send4.sendNowait(inner)
                receive4.close()
                send4.close()
            }
        },

        ConformanceTest("j.event", "an Event wakes every waiter and stays set") { backend in
            try await backend.run {
                let event = Event()
                let woken = Gauge()
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<10 {
                        try group.startSoon {
                            try await event.wait()
                            woken.increment()
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try check(woken.value == 0, "waiters woke before set()")
                    event.set()
                }
                try check(woken.value == 10, "set() woke \(woken.value) of 10")
                try await event.wait()
                try check(event.isSet, "the event is not set")
            }
        },
    ]
}
