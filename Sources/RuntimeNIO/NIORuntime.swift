#if NIO
import Dispatch
public import NIOCore
public import NIOPosix
public import Runtime
import Synchronization

/// The SwiftNIO backend: a runtime whose executor is an `EventLoop` — a loop of its own for the run, or one of
/// the application's (a Hummingbird or Vapor app's), so library code written against `Runtime` runs on the
/// app's own loops.
///
/// ```swift
/// try NIORuntime.run { try await Runtime.sleep(for: .milliseconds(10)) }           // from main
/// try await NIORuntime.run { … }                                                  // a loop of its own
/// try await NIORuntime.run(on: group.next()) { … }                                // an application's loop
/// ```
///
/// Timers are the loop's scheduled callbacks (one armed for the earliest deadline of a timer heap), blocking
/// work runs on threads of the run's own (or an application's `NIOThreadPool`), and descriptor readiness
/// comes from a thread of the backend's own (SwiftNIO cannot watch a descriptor without reading it itself);
/// every task it wakes runs on the loop. For an
/// application that serves requests, ``NIORuntimeHost`` keeps one runtime on a loop for the app's lifetime.
public enum NIORuntime {
    /// Tuning for one run.
    public struct Configuration: Sendable {
        /// The size of `Runtime.defaultBlockingLimiter` (default 40, as in anyio).
        public var blockingTokens = 40
        /// The most threads of the run's own blocking pool, started on demand as on the other backends
        /// (default 64, above ``blockingTokens``, so that blocking closures waiting on one another never queue
        /// behind each other).
        public var blockingThreads = 64
        /// An application's thread pool to use instead of one of the run's own (for example
        /// `NIOThreadPool.singleton`); it is left running when the run ends. Give it at least as many threads
        /// as blocking calls may run at once.
        public var threadPool: NIOThreadPool?

        public init() {}
    }

    /// Runs `body` on a new event loop of its own and blocks the calling thread until it finished (anyio's
    /// `run`), for `main`.
    ///
    /// - Throws: what `body` throws; `RuntimeError.Code.backendFailure` when the backend cannot start.
    /// - Warning: Blocks the calling thread. Do not call it from a task of another runtime, or on an event loop.
    public static func run<T: Sendable>(
        configuration: Configuration = Configuration(),
        _ body: @escaping @Sendable () async throws -> T
    ) throws -> T {
        let (backend, runtime) = try make(on: nil, configuration: configuration)
        let done = DispatchSemaphore(value: 0)
        // The root task ends after the backend closed, so the caller returns with nothing left behind.
        let root = RootTask(runtime: runtime, { () async throws -> T in
            try await Runtime.current.enter(body, afterwards: { await backend.close() })
        }, finished: { done.signal() })
        done.wait()
        backend.releaseLoopBlocking()
        return try root.result()
    }

    /// Runs `body` on an event loop — `eventLoop`, or a new one of its own when nil — from code already inside
    /// Swift concurrency. The calling task runs `body` on the loop and comes back to its own executor
    /// afterwards; cancelling it cancels every runtime wait inside.
    ///
    /// - Throws: what `body` throws; `RuntimeError.Code.backendFailure` when the backend cannot start.
    public static func run<T>(
        on eventLoop: (any EventLoop)? = nil,
        configuration: Configuration = Configuration(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        let (backend, runtime) = try make(on: eventLoop, configuration: configuration)
        return try await runtime.enter(isolation: isolation, body, afterwards: {
            await backend.close()
            await backend.releaseLoop()
        })
    }

    /// A backend on `eventLoop`, or on a new group of one loop that the backend shuts down with the run.
    static func make(on eventLoop: (any EventLoop)?, configuration: Configuration) throws(RuntimeError) -> (NIOBackend, Runtime) {
        let owned: MultiThreadedEventLoopGroup?
        let loop: any EventLoop
        if let eventLoop {
            (owned, loop) = (nil, eventLoop)
        } else {
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            (owned, loop) = (group, group.next())
        }
        do throws(RuntimeError) {
            let backend = try NIOBackend(eventLoop: loop, ownedGroup: owned, configuration: configuration)
            let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
            return (backend, runtime)
        } catch {
            owned?.shutdownGracefully { _ in }
            throw error
        }
    }
}

/// A runtime on an application's event loop for as long as the application runs: request handlers join it
/// with ``run(isolation:_:)``, so their SQL work runs on that loop, shares one connection pool, and is
/// cancelled when the handler's task is.
///
/// ```swift
/// let host = try NIORuntimeHost(on: MultiThreadedEventLoopGroup.singleton.next())
/// // in a route:
/// let name = try await host.run { try await engine.withConnection { … } }
/// // when the application stops (or run it as a swift-service-lifecycle Service, trait ServiceLifecycle):
/// await host.shutdown()
/// ```
///
/// One host is one loop: one thread runs its tasks. Several hosts (one per loop of a group) spread the work;
/// an engine keeps one pool per runtime.
public final class NIORuntimeHost: Sendable {
    /// The runtime; `Runtime.current` inside ``run(isolation:_:)``.
    public let runtime: Runtime
    private let backend: NIOBackend
    private let state = Locked<(shutDown: Bool, done: Bool)>((false, false))

    /// A runtime on `eventLoop` (not shut down by the host).
    public init(on eventLoop: any EventLoop, configuration: NIORuntime.Configuration = .init()) throws(RuntimeError) {
        (backend, runtime) = try NIORuntime.make(on: eventLoop, configuration: configuration)
    }

    /// The loop the runtime's tasks run on.
    public var eventLoop: any EventLoop { backend.eventLoop }

    /// Runs `body` as part of the runtime, in the calling task: on the loop, with `Runtime.current` set.
    /// Cancelling the calling task (a request whose client went away) cancels every runtime wait inside.
    ///
    /// - Throws: what `body` throws; `RuntimeError.Code.closed` once the host has shut down.
    public func run<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T) async throws -> T {
        if state.withLock({ $0.shutDown }) {
            throw RuntimeError(.closed, "the NIO runtime host has shut down")
        }
        return try await runtime.enter(isolation: isolation, body)
    }

    /// Ends the runtime: refuses new ``run(isolation:_:)`` calls, cancels and awaits the runtime's system
    /// tasks, waits for blocking work (at most 1 s: the run's own pool's work and threads, or the run's work on
    /// an application's pool), and releases the backend. The event loop stays. Call it
    /// after the work that uses the runtime has ended (close engines first); a second call does nothing.
    public func shutdown() async {
        let first = state.withLock { state -> Bool in
            defer { state.shutDown = true }
            return !state.shutDown
        }
        guard first else { return }
        let backend = self.backend
        try? await runtime.enter({}, afterwards: {
            await backend.close()
            await backend.releaseLoop()
        })
        state.withLock { $0.done = true }
    }

    /// Whether ``shutdown()`` has finished.
    public var isShutDown: Bool { state.withLock { $0.done } }
}
#endif
