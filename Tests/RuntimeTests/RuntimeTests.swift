import AnyRuntime
import Dispatch
import Runtime
import RuntimeUV
import TestSupport
import RuntimeTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Runtime", .limit(minutes: 1))
struct RuntimeTests {
    /// Starts a system task that waits for an hour and returns at once; says whether the run's end cancelled it.
    @Sendable static func startSystemTaskAndReturn(_ cancelled: Flag) async throws {
        try Runtime.current.startSystemTask {
            do {
                try await Runtime.sleep(for: .seconds(3600))
            } catch {
                cancelled.set()
            }
        }
    }

    @Test("the synchronous run entry points also cancel and await their system tasks before returning")
    func synchronousRunsEndSystemTasks() throws {
        for backend in Backend.allCases.map(\.rawValue) + ["virtual"] {
            let cancelled = Flag()
            let body: @Sendable () async throws -> Void = { try await Self.startSystemTaskAndReturn(cancelled) }
            if let real = Backend(rawValue: backend) {
                try real.run(body)
            } else {
                try VirtualTimeRuntime.run(body)
            }
            #expect(cancelled.isSet, "\(backend): the system task was not cancelled and awaited")
        }
    }

    @Test("runtime APIs outside a runtime throw noRuntime, naming the fix")
    func noRuntime() async throws {
        #expect(Runtime.currentIfAny == nil)
        do {
            try await Runtime.sleep(for: .milliseconds(1))
            Issue.record("sleep outside a runtime did not throw")
        } catch let error as RuntimeError {
            #expect(error.code == .noRuntime)
            #expect(error.message.contains("run {"))
        }
        await #expect(throws: RuntimeError.self) { _ = try await moveOnAfter(.seconds(1)) { _ in 1 } }
    }

    @Test("Runtime.current names the backend; the clock is monotonic", arguments: TestBackend.selected)
    func currentAndClock(_ backend: TestBackend) async throws {
        try await backend.run {
            let runtime = try Runtime.current
            #expect(runtime.name == backend.rawValue)
            let clock = runtime.clock
            let start = clock.now
            try await clock.sleep(for: .milliseconds(3))
            #expect(start.duration(to: clock.now) >= .milliseconds(3))
        }
    }

    @Test("a Swift task cancelled inside a shield: runtime waits finish, the next checkpoint after it throws",
          arguments: TestBackend.selected)
    func swiftCancellationInsideShield(_ backend: TestBackend) async throws {
        try await backend.run {
            let finished = Flag()
            let afterShield = Flag()
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    _ = try await withCancelScope(shield: true) { _ in
                        try await Runtime.sleep(for: .milliseconds(20))
                        finished.set()
                    }
                    try await Runtime.checkpoint()
                    afterShield.set()
                }
                try await Runtime.sleep(for: .milliseconds(2))
                group.cancel()
            }
            #expect(finished.isSet)
            #expect(!afterShield.isSet)
        }
    }

    @Test("a task group started from a child task's group handle", arguments: TestBackend.selected)
    func childrenStartSiblings(_ backend: TestBackend) async throws {
        try await backend.run {
            let count = Counter()
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    for _ in 0..<10 {
                        try group.startSoon {
                            try await Runtime.checkpoint()
                            count.increment()
                        }
                    }
                }
            }
            #expect(count.value == 10)
        }
    }

    @Test("a channel's receiver is an AsyncSequence that ends when every sender is released",
          arguments: TestBackend.selected)
    func channelEndsWhenSendersAreReleased(_ backend: TestBackend) async throws {
        try await backend.run {
            var (send, receive) = try makeMemoryChannel(of: Int.self, bufferSize: 4) as (MemorySendChannel<Int>?, MemoryReceiveChannel<Int>)
            try send?.sendNowait(1)
            try send?.sendNowait(2)
            send = nil  // released without close(): the channel still ends
            var values: [Int] = []
            for try await value in receive { values.append(value) }
            #expect(values == [1, 2])
        }
    }

    @Test("a deadline that fires as its wait ends and the wait's scope exits touches no freed scope (2,000 races)",
          arguments: TestBackend.selected)
    func deadlineRacesScopeExit(_ backend: TestBackend) async throws {
        // The outer scope's deadline timer fires on the backend's timer thread while the wait, parked in an
        // inner scope, is woken from another thread and leaves (freeing the inner scope): the timer's
        // cancellation once looked at the inner scope after it was gone (AddressSanitizer saw it in CI).
        var outcomes = (completed: 0, cancelled: 0)
        try await backend.run {
            for _ in 0..<2_000 {
                let deadline = try Runtime.current.now.advanced(by: .microseconds(Int64.random(in: 0...100)))
                let done: Void?? = try await withCancelScope(deadline: deadline) { _ in
                    try await withCancelScope { _ in
                        try await Runtime.withCompletion(onCancel: .abandon) { (completion: Completion<Void>) in
                            DispatchQueue.global().asyncAfter(deadline: .now() + .microseconds(Int.random(in: 0...100))) {
                                completion.resume()
                            }
                        }
                    }
                }
                if done == nil { outcomes.cancelled += 1 } else { outcomes.completed += 1 }
            }
        }
        #expect(outcomes.completed + outcomes.cancelled == 2_000)
    }

    @Test("a blocking closure still queued for a thread when its caller is cancelled never runs")
    func queuedBlockingWorkIsWithdrawn() async throws {
        var configuration = UVRuntime.Configuration()
        configuration.blockingThreads = 1
        let firstMayEnd = Flag()
        let secondRan = Flag()
        try await UVRuntime.run(configuration: configuration) {
            let runtime = try Runtime.current
            try await Runtime.withTaskGroup { group in
                // Occupies the only thread.
                try group.startSoon { try await runtime.runBlocking { while !firstMayEnd.isSet { usleep(200) } } }
                try await Runtime.sleep(for: .milliseconds(5))
                let result: Void? = try await moveOnAfter(.milliseconds(10)) { _ in
                    try await runtime.runBlocking { secondRan.set() }  // queued behind the first
                }
                #expect(result == nil, "the queued call was not cancelled")
                let abandoned: Void? = try await moveOnAfter(.milliseconds(10)) { _ in
                    try await runtime.runBlocking(onCancel: .abandon) { secondRan.set() }
                }
                #expect(abandoned == nil, "the queued abandoned call was not cancelled")
                firstMayEnd.set()
            }
        }
        #expect(!secondRan.isSet, "a withdrawn closure ran")
    }

    @Test("Backend names parse; unknown names are a typed error listing the choices")
    func backendNames() throws {
        #expect(try Backend(named: "UV") == .uv)
        #expect(try Backend(named: "libuv") == .uv)
        #expect(try Backend(named: "dispatch") == .dispatch)
        do {
            _ = try Backend(named: "trio")
            Issue.record("an unknown backend name was accepted")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains("uv, dispatch"))
        }
    }

    @Test("RuntimeInstant arithmetic saturates instead of trapping")
    func instantArithmetic() {
        let instant = RuntimeInstant(nanoseconds: 5)
        #expect(instant.advanced(by: .seconds(1)).nanoseconds == 1_000_000_005)
        #expect(RuntimeInstant.never.advanced(by: .seconds(1)) == .never)
        #expect(instant.advanced(by: .seconds(Int64.max)) == .never)
        #expect(RuntimeInstant(nanoseconds: .min).duration(to: .never) == .nanoseconds(Int64.max))
        #expect(Duration.seconds(Int64.max).saturatingNanoseconds == .max)
    }

    @Test("Semaphore rejects bad values with a typed error")
    func semaphoreArguments() throws {
        #expect(throws: RuntimeError.self) { try Semaphore(initialValue: -1) }
        #expect(throws: RuntimeError.self) { try Semaphore(initialValue: 3, maxValue: 2) }
        let bounded = try Semaphore(initialValue: 1, maxValue: 1)
        #expect(throws: RuntimeError.self) { try bounded.release() }
    }
}

/// A thread-safe counter for tests.
final class Counter: Sendable {
    private let storage = Locked(0)
    func increment() { storage.withLock { $0 += 1 } }
    var value: Int { storage.withLock { $0 } }
}

/// A thread-safe flag for tests.
final class Flag: Sendable {
    private let storage = Locked(false)
    func set() { storage.withLock { $0 = true } }
    var isSet: Bool { storage.withLock { $0 } }
}
