import Runtime
import RuntimeTesting
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The virtual clock's own controls (trio's `MockClock`): they exist on the virtual-time backend only.
@Suite("Virtual clock", .limit(minutes: 1))
struct VirtualClockTests {
    private static func realNow() -> Duration {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return .seconds(ts.tv_sec) + .nanoseconds(ts.tv_nsec)
    }

    @Test("Autojump.never: the clock moves only through jump(by:), which refuses negative durations")
    func neverJumps() async throws {
        var configuration = VirtualTimeRuntime.Configuration()
        configuration.autojump = .never
        try await VirtualTimeRuntime.run(configuration: configuration) {
            let runtime = try Runtime.current
            let start = runtime.now
            let woke = Locked(false)
            try await Runtime.withTaskGroup { group in
                try group.startSoon {
                    try await Runtime.sleep(for: .seconds(10))
                    woke.withLock { $0 = true }
                }
                try await Runtime.waitAllTasksBlocked()
                #expect(runtime.now == start, "the clock moved by itself")
                do {
                    try VirtualTimeRuntime.jump(by: .seconds(-1))
                    Issue.record("a negative jump was accepted")
                } catch let error as RuntimeError {
                    #expect(error.code == .invalidArgument)
                }
                try VirtualTimeRuntime.jump(by: .seconds(4))
                try await Runtime.waitAllTasksBlocked()
                #expect(!woke.withLock { $0 }, "the sleeper woke 6 s early")
                try VirtualTimeRuntime.jump(by: .seconds(6))
            }
            #expect(woke.withLock { $0 })
            #expect(start.duration(to: runtime.now) == .seconds(10))
        }
    }

    @Test("Autojump.after(threshold): the idle loop jumps only after that much real time; setAutojump applies at once")
    func thresholdAndChange() async throws {
        var configuration = VirtualTimeRuntime.Configuration()
        configuration.autojump = try .after(.milliseconds(50))
        try await VirtualTimeRuntime.run(configuration: configuration) {
            let runtime = try Runtime.current
            let start = runtime.now
            let realStart = Self.realNow()
            try await Runtime.sleep(for: .seconds(3600))
            #expect(Self.realNow() - realStart >= .milliseconds(50), "jumped before the loop was idle 50 ms")
            #expect(start.duration(to: runtime.now) == .seconds(3600), "the clock jumped to \(runtime.now)")

            // From never to immediately while a task sleeps: it wakes without a jump(by:).
            try VirtualTimeRuntime.setAutojump(.never)
            try await Runtime.withTaskGroup { group in
                try group.startSoon { try await Runtime.sleep(for: .seconds(5)) }
                try await Runtime.waitAllTasksBlocked()
                try VirtualTimeRuntime.setAutojump(.immediately)
            }
            #expect(start.duration(to: runtime.now) == .seconds(3605))
        }
        #expect(throws: RuntimeError.self) { _ = try VirtualTimeRuntime.Autojump.after(.milliseconds(-1)) }
    }
}
