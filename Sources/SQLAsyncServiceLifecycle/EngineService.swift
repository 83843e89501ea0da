#if ServiceLifecycle
import Logging
public import Runtime
public import SQLAsync
public import ServiceLifecycle
#if NIO
public import RuntimeNIO
#endif

/// An ``Engine`` as a swift-service-lifecycle `Service`: it runs until the service group's graceful shutdown,
/// then stops taking checkouts, waits for the work in flight up to `drainTimeout`, and closes every
/// connection.
///
/// ```swift
/// let host = try NIORuntimeHost(on: MultiThreadedEventLoopGroup.singleton.next())    // trait NIO
/// let engine = try Engine(url)
/// let group = ServiceGroup(services: [host, EngineService(engine, runtime: host.runtime), app], logger: logger)
/// try await group.run()      // on SIGTERM: the app stops, then the engine drains and closes, then the host
/// ```
///
/// Services shut down in the reverse order of the list, so put the engine after the runtime it runs on and
/// before the application that uses it.
public struct EngineService: Service {
    public let engine: Engine
    /// The runtime the engine's connections live on (an engine keeps one pool per runtime).
    public let runtime: Runtime
    /// How long the shutdown waits for connections in use to come back.
    public let drainTimeout: Duration

    public init(_ engine: Engine, runtime: Runtime, drainTimeout: Duration = .seconds(30)) {
        self.engine = engine
        self.runtime = runtime
        self.drainTimeout = drainTimeout
    }

    public func run() async throws {
        // Returns at graceful shutdown; throws CancellationError when the group cancels the service instead.
        let graceful: Void? = try? await gracefulShutdown()
        let engine = self.engine
        let drainTimeout = self.drainTimeout
        if graceful != nil {
            // close(timeout:) logs the connections still in use when the drain runs out.
            _ = await runtime.enter { await engine.close(timeout: drainTimeout) }
        } else {
            // Cancelled: no waiting; idle connections close now, the rest as they come back.
            await runtime.enter { await engine.dispose() }
        }
    }
}

#if NIO
/// A ``RuntimeNIO/NIORuntimeHost`` as a `Service`: the runtime lives until graceful shutdown (or
/// cancellation), then shuts down. List it before the services that use its runtime.
extension NIORuntimeHost: Service {
    public func run() async throws {
        _ = try? await gracefulShutdown()
        await shutdown()
    }
}
#endif
#endif
