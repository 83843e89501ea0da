import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension RuntimeInstant {
    /// Now on CLOCK_MONOTONIC: the clock a real backend's ``RuntimeBackend/now()`` reads.
    @inline(__always)
    public static func monotonicNow() -> RuntimeInstant {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return RuntimeInstant(nanoseconds: Int64(ts.tv_sec) &* 1_000_000_000 &+ Int64(ts.tv_nsec))
    }
}

/// The root task of a synchronous `run`: started on the runtime's executor, its outcome kept for the thread
/// that drives the loop.
///
/// ```swift
/// let root = RootTask(runtime: runtime, body) { loop.stop() }   // `finished` runs when body is done
/// loop.drive()                                                   // on the calling thread
/// return try root.result()
/// ```
public final class RootTask<Value: Sendable>: Sendable {
    private let outcome = Locked<Result<Value, any Error>?>(nil)

    /// Starts `body` as a task that prefers `runtime`'s executor and sees `runtime` as
    /// ``Runtime/current``; calls `finished` once the body has returned or thrown.
    public init(
        runtime: Runtime,
        _ body: @escaping @Sendable () async throws -> Value,
        finished: @escaping @Sendable () -> Void
    ) {
        Task(executorPreference: runtime.backend.executor) { [self] in
            let result: Result<Value, any Error>
            do {
                result = .success(try await runtime.enter { try await body() })
            } catch {
                result = .failure(error)
            }
            // The run's system tasks end with its body, before the loop stops.
            await runtime.stopSystemTasks()
            outcome.withLock { $0 = result }
            finished()
        }
    }

    /// What the body returned, or its error.
    ///
    /// - Throws: the body's error; ``RuntimeError/Code/backendFailure`` when it has not finished (the loop
    ///   stopped early).
    public func result() throws -> Value {
        guard let result = outcome.withLock({ $0 }) else {
            throw RuntimeError(.backendFailure, "the loop stopped before the run's root task finished")
        }
        return try result.get()
    }
}

extension Runtime {
    /// Runs `body` on this runtime like ``enter(isolation:_:)``, then cancels and awaits the run's system tasks
    /// (``startSystemTask(_:)``) and always runs `afterwards` (the backend's shutdown), whether the body
    /// returned or threw; rethrows the body's error first, else `afterwards`'.
    public func enter<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T,
        afterwards: () async throws -> Void
    ) async throws -> T {
        let result: Result<T, any Error>
        do {
            result = .success(try await enter(isolation: isolation, body))
        } catch {
            result = .failure(error)
        }
        // System tasks end with the body: cancelled, and awaited before the backend shuts down.
        await stopSystemTasks()
        try await afterwards()
        return try result.get()
    }
}

/// A thread that runs one loop for a backend's async `run`: started and joined without blocking a task.
public final class LoopThread: Sendable {
    private let handle = Locked<pthread_t?>(nil)
    private let started = Atomic<Bool>(false)
    private let exit = Locked<(done: Bool, waiter: UnsafeContinuation<Void, Never>?)>((false, nil))
    private let prepare: @Sendable () -> Void
    private let body: @Sendable () -> Void

    private init(prepare: @escaping @Sendable () -> Void, body: @escaping @Sendable () -> Void) {
        self.prepare = prepare
        self.body = body
    }

    /// Starts a thread that calls `prepare` and then `body`; returns once `prepare` has run on it (for
    /// example once the loop adopted the thread).
    ///
    /// - Throws: ``RuntimeError/Code/backendFailure`` when no thread can be created.
    public static func start(
        prepare: @escaping @Sendable () -> Void,
        body: @escaping @Sendable () -> Void
    ) throws(RuntimeError) -> LoopThread {
        let thread = LoopThread(prepare: prepare, body: body)
        var handle = pthread_t()
        let context = Unmanaged.passRetained(thread).toOpaque()
        let rc = pthread_create(&handle, nil, { context in
            guard let context else { return nil }
            // Retained for this thread below; released here.
            Unmanaged<LoopThread>.fromOpaque(context).takeRetainedValue().main()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<LoopThread>.fromOpaque(context).release()
            throw RuntimeError(.backendFailure, "cannot start a loop thread (pthread_create: \(rc))")
        }
        thread.handle.withLock { $0 = handle }
        while !thread.started.load(ordering: .acquiring) { sched_yield() }
        return thread
    }

    private func main() {
        prepare()
        started.store(true, ordering: .releasing)
        body()
        let waiter = exit.withLock { state -> UnsafeContinuation<Void, Never>? in
            state.done = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume()
    }

    /// Waits until the thread's body has returned, then joins the thread. Not interruptible.
    ///
    /// - Warning: Call it from a task that is not running on the thread itself.
    public func join() async {
        await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
            let done = exit.withLock { state -> Bool in
                if state.done { return true }
                state.waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
        // The body has returned; the thread is ending, so joining takes microseconds.
        if let handle = handle.withLock({ state -> pthread_t? in defer { state = nil }; return state }) {
            pthread_join(handle, nil)
        }
    }

    /// Whether the thread has not been joined yet.
    public var isAlive: Bool { handle.withLock { $0 != nil } }
}
