#if ServiceLifecycle && NIO
import Logging
import NIOPosix
import Runtime
import RuntimeNIO
import SQLAsync
import SQLAsyncServiceLifecycle
import ServiceLifecycle
import TestSupport
import Testing

@Suite("Service lifecycle and the NIO runtime host")
struct LifecycleTests {
    /// Stands in for an application: serves through the host until graceful shutdown, and reports in.
    struct Application: Service {
        let host: NIORuntimeHost
        let engine: Engine
        let served: Event
        func run() async throws {
            let value = try await host.run { try await engine.withConnection { try await $0.execute("SELECT \(7)").scalar(Int.self) } }
            #expect(value == 7)
            served.set()
            try? await gracefulShutdown()
        }
    }

    @Test("graceful shutdown: the application stops, the engine drains and closes, then the host shuts down",
          arguments: IntegrationDatabase.allCases)
    func shutsDownInOrder(_ database: IntegrationDatabase) async throws {
        let host = try NIORuntimeHost(on: MultiThreadedEventLoopGroup.singleton.next())
        let engine = try Engine(try database.url(), logger: quietLogger)
        let served = Event()
        let group = ServiceGroup(
            services: [host, EngineService(engine, runtime: host.runtime, drainTimeout: .seconds(5)), Application(host: host, engine: engine, served: served)],
            gracefulShutdownSignals: [], logger: quietLogger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            // The application has used the engine through the host: ask the group to stop.
            try await host.run { try await served.wait() }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        #expect(host.isShutDown)
        // The engine took no more checkouts; the host refuses new work.
        await #expect(throws: RuntimeError.self) { try await host.run { 1 } }
        _ = try await NIORuntime.run {
            await #expect { try await engine.withConnection { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
        }
    }

    @Test("work joined through the host runs on its loop, shares one pool, and a cancelled caller cancels it")
    func hostRunsOnTheLoop() async throws {
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let host = try NIORuntimeHost(on: loop)
        let engine = try Engine(try IntegrationDatabase.postgresql.url(), logger: quietLogger)
        // Ten callers at once, each in a task of its own (as request handlers are).
        try await withThrowingTaskGroup(of: Bool.self) { callers in
            for index in 0..<10 {
                callers.addTask {
                    try await host.run {
                        let onLoop = loop.inEventLoop
                        let value = try await engine.withConnection { try await $0.execute("SELECT \(index)").scalar(Int.self) }
                        return onLoop && value == index
                    }
                }
            }
            for try await ok in callers { #expect(ok) }
        }
        // A caller cancelled mid-query (a client that went away): the query is cancelled on the server too.
        let caller = Task { try await host.run { try await engine.withConnection { try await $0.execute("SELECT pg_sleep(30)") } } }
        try await host.run { try await Runtime.sleep(for: .milliseconds(200)) }
        caller.cancel()
        await #expect(throws: CancellationError.self) { try await caller.value }
        let statistics = try await host.run { try engine.poolStatistics() }
        #expect(statistics.open >= 1 && statistics.open <= 10)
        try await host.run { await engine.dispose() }
        await host.shutdown()
    }
}
#endif
