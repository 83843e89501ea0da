// Shared by the test targets: which backends to run on, and how.
import AnyRuntime
import Runtime
public import RuntimeTesting

#if canImport(Glibc)
import Glibc
#endif

/// Every backend the tests run on: the real ones (SwiftNIO too, with the trait NIO) and virtual time. `ANYRUNTIME_BACKEND`
/// (comma-separated names, or `all`) narrows the list.
public enum TestBackend: String, CaseIterable, Sendable, CustomStringConvertible {
    case uv, dispatch, virtual
    #if NIO
    /// SwiftNIO (trait NIO).
    case nio
    #endif

    public var description: String { rawValue }

    /// The backends selected by `ANYRUNTIME_BACKEND`; all of them when it is unset.
    public static var selected: [TestBackend] {
        guard let names = selectedNames() else { return allCases }
        return allCases.filter { names.contains($0.rawValue) }
    }

    /// Runs `body` on a fresh runtime of this backend.
    public func run<T>(isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> T) async throws -> T {
        switch self {
        case .uv: try await Backend.uv.run(isolation: isolation, body)
        case .dispatch: try await Backend.dispatch.run(isolation: isolation, body)
        case .virtual: try await VirtualTimeRuntime.run(configuration: Self.virtualConfiguration, isolation: isolation, body)
        #if NIO
        case .nio: try await Backend.nio.run(isolation: isolation, body)
        #endif
        }
    }

    /// Virtual time as the tests run it: while a database server is silent, the clock keeps pace with real
    /// time up to 60 s (not the default 250 ms), so that a server slowed down by the parallel suite is not
    /// mistaken for one that stopped answering — the library's own deadlines (a connect's 10 s, a COMMIT's
    /// 10 s, a clean-up's 5 s) would otherwise pass in virtual time while the server is merely busy. With a
    /// 5 s period, a loaded sanitizer run once saw every virtual-time connect time out at once. A test
    /// waiting for a short deadline on a silent server still takes only that deadline's real time.
    static var virtualConfiguration: VirtualTimeRuntime.Configuration {
        var configuration = VirtualTimeRuntime.Configuration()
        configuration.ioQuietPeriod = .seconds(60)
        return configuration
    }

    /// This backend as the conformance suite sees it.
    public var conformanceBackend: ConformanceBackend {
        let backend = self
        return ConformanceBackend(name: rawValue) { body in try await backend.run(body) }
    }
}

/// The lowercased names in `ANYRUNTIME_BACKEND`, or nil when it is unset, empty or `all`.
func selectedNames() -> Set<String>? {
    guard let raw = getenv(Backend.environmentVariable).map({ String(cString: $0) }), !raw.isEmpty, raw != "all"
    else { return nil }
    return Set(raw.lowercased().split(separator: ",").map { $0 == "libuv" ? "uv" : String($0) })
}

/// How this test process was built.
public enum TestBuild {
    /// Whether this is a sanitizer build (scripts/sanitizers.sh builds with `-DANYRUNTIME_PTHREAD_LOCKS`).
    /// ThreadSanitizer makes the code 5 to 15 times slower, so time limits stretch, and the few tests that
    /// assert real-time bounds against a real server (a clean-up's 5 s, a trigger's sleep outlasting a
    /// cancel request) do not run there: they run in every ordinary build.
    public static var isSanitized: Bool {
        #if ANYRUNTIME_PTHREAD_LOCKS
        true
        #else
        false
        #endif
    }

    /// `minutes`, stretched tenfold in a sanitizer build.
    public static func minutes(_ minutes: Int) -> Int { isSanitized ? minutes * 10 : minutes }
}
