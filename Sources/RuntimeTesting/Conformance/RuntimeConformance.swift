import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A backend under test: a name and a way to run a body on a fresh runtime of it.
///
/// ```swift
/// let mine = ConformanceBackend(name: "nio") { body in try await NIORuntime.run { try await body() } }
/// for test in RuntimeConformance.tests { try await test.run(on: mine) }
/// ```
public struct ConformanceBackend: Sendable, CustomStringConvertible {
    /// The name shown in test output.
    public let name: String
    private let runner: @Sendable (_ body: () async throws -> Void) async throws -> Void

    /// - Parameters:
    ///   - name: the name shown in test output.
    ///   - run: starts a new runtime of the backend, runs `body` on it (with `Runtime.current` set), shuts
    ///     the runtime down completely, and returns; it rethrows what `body` throws.
    public init(name: String, run: @escaping @Sendable (_ body: () async throws -> Void) async throws -> Void) {
        self.name = name
        self.runner = run
    }

    /// Runs `body` on a fresh runtime of this backend.
    public func run(_ body: () async throws -> Void) async throws { try await runner(body) }

    public var description: String { name }

    /// The virtual-time backend of this module.
    public static let virtualTime = ConformanceBackend(name: "virtual") { body in
        try await VirtualTimeRuntime.run { try await body() }
    }
}

/// One behaviour every backend must show.
public struct ConformanceTest: Sendable, CustomStringConvertible {
    /// A stable identifier, such as `"d.deadline-interrupts-waits"`.
    public let id: String
    /// What the test asserts.
    public let summary: String
    let body: @Sendable (ConformanceBackend) async throws -> Void

    init(_ id: String, _ summary: String, _ body: @escaping @Sendable (ConformanceBackend) async throws -> Void) {
        self.id = id
        self.summary = summary
        self.body = body
    }

    /// Runs the test on `backend`.
    ///
    /// - Throws: ``ConformanceFailure`` when the backend does not behave; any other error is a failure too.
    public func run(on backend: ConformanceBackend) async throws { try await body(backend) }

    public var description: String { id }
}

/// A conformance test found the backend misbehaving.
public struct ConformanceFailure: Error, CustomStringConvertible {
    /// What was expected and what happened.
    public let message: String
    /// Where the expectation is written.
    public let file: String
    public let line: Int

    public var description: String { "\(message) (\(file):\(line))" }
}

/// The public conformance suite: every backend, ours or a third party's, passes all of ``tests``.
public enum RuntimeConformance {
    /// Every test, in order.
    public static var tests: [ConformanceTest] {
        taskGroupTests + cancelScopeTests + ioTests + blockingTests + primitiveTests + lifecycleTests + trioTests
            + scopeObjectTests + descriptorTests + systemTaskTests
    }

    /// The test with identifier `id`.
    public static func test(_ id: String) -> ConformanceTest? { tests.first { $0.id == id } }
}

// MARK: - Helpers for the tests

/// Fails the current conformance test unless `condition` holds.
func check(
    _ condition: Bool,
    _ message: @autoclosure () -> String,
    file: String = #fileID,
    line: Int = #line
) throws(ConformanceFailure) {
    if !condition { throw ConformanceFailure(message: message(), file: file, line: line) }
}

/// Fails the current conformance test.
func fail(_ message: String, file: String = #fileID, line: Int = #line) -> ConformanceFailure {
    ConformanceFailure(message: message, file: file, line: line)
}

/// A thread-safe list of values, appended to from tasks and threads.
final class Recorder<Value: Sendable>: Sendable {
    private let storage = Locked<[Value]>([])
    init() {}
    func append(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
    var count: Int { storage.withLock { $0.count } }
}

/// A thread-safe counter that also remembers its highest value.
final class Gauge: Sendable {
    private let state = Locked<(value: Int, peak: Int)>((0, 0))
    init() {}
    @discardableResult func increment() -> Int {
        state.withLock { state in
            state.value += 1
            state.peak = max(state.peak, state.value)
            return state.value
        }
    }
    func decrement() { state.withLock { $0.value -= 1 } }
    var value: Int { state.withLock { $0.value } }
    var peak: Int { state.withLock { $0.peak } }
}

/// A thread-safe boolean.
final class Flag: Sendable {
    private let storage = Atomic<Bool>(false)
    init() {}
    func set() { storage.store(true, ordering: .releasing) }
    var isSet: Bool { storage.load(ordering: .acquiring) }
}

struct Boom: Error, Equatable {
    let id: Int
}

/// A connected pair of non-blocking Unix stream sockets.
struct SocketPair: Sendable {
    let left: Int32
    let right: Int32

    init() throws(ConformanceFailure) {
        var fds: [Int32] = [-1, -1]
        #if canImport(Glibc)
        let type = Int32(SOCK_STREAM.rawValue)
        #else
        let type = SOCK_STREAM
        #endif
        guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { throw fail("socketpair failed: errno \(errno)") }
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
        left = fds[0]
        right = fds[1]
    }

    func send(_ byte: UInt8, from fd: Int32) throws(ConformanceFailure) {
        var value = byte
        guard write(fd, &value, 1) == 1 else { throw fail("write to fd \(fd) failed: errno \(errno)") }
    }

    /// Reads one byte, or nil when none is there (EAGAIN).
    func receive(on fd: Int32) -> UInt8? {
        var value: UInt8 = 0
        return read(fd, &value, 1) == 1 ? value : nil
    }

    /// Forgets both fds on `runtime`, then closes them.
    func close(on runtime: Runtime) async {
        await runtime.forget(fd: left)
        await runtime.forget(fd: right)
        _ = Glibc.close(left)
        _ = Glibc.close(right)
    }
}

/// Elapsed time on `runtime`'s clock since `start`.
func elapsed(since start: RuntimeInstant, on runtime: Runtime) -> Duration {
    start.duration(to: runtime.now)
}
