public import Runtime
import RuntimeDispatch
import RuntimeUV
#if NIO
import RuntimeNIO
#endif

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The backends this package ships, chosen by name at run time.
///
/// ```swift
/// let backend = try Backend.fromEnvironment()          // ANYRUNTIME_BACKEND=uv|dispatch, default uv
/// try backend.run { try await app() }
/// ```
///
/// Library code never needs this: it uses `Runtime.current`. Applications, demos, tests and benchmarks
/// use it to run the same code on each backend.
public enum Backend: String, CaseIterable, Sendable, CustomStringConvertible {
    /// libuv (`RuntimeUV`).
    case uv
    /// Dispatch (`RuntimeDispatch`).
    case dispatch
    #if NIO
    /// SwiftNIO (`RuntimeNIO`, trait `NIO`): a loop of its own per run.
    case nio
    #endif

    /// The environment variable ``fromEnvironment(variable:default:)`` reads.
    public static let environmentVariable = "ANYRUNTIME_BACKEND"

    public var description: String { rawValue }

    /// The backend named `name` (`uv`, `libuv`, `dispatch`, case-insensitive).
    ///
    /// - Throws: `RuntimeError.Code.invalidArgument` naming the accepted values.
    public init(named name: String) throws(RuntimeError) {
        switch name.lowercased() {
        case "uv", "libuv": self = .uv
        case "dispatch", "libdispatch": self = .dispatch
        #if NIO
        case "nio", "swiftnio": self = .nio
        #endif
        default:
            throw RuntimeError(
                .invalidArgument,
                "unknown backend '\(name)'; use one of: \(Backend.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// The backend named by `variable`, or `default` when it is unset or empty.
    ///
    /// - Throws: `RuntimeError.Code.invalidArgument` when the variable names no backend.
    public static func fromEnvironment(
        variable: String = environmentVariable,
        default: Backend = .uv
    ) throws(RuntimeError) -> Backend {
        guard let value = getenv(variable).map({ String(cString: $0) }), !value.isEmpty else { return `default` }
        return try Backend(named: value)
    }

    /// The backends listed in `variable` (comma-separated, or `all`), or every backend when it is unset.
    ///
    /// - Throws: `RuntimeError.Code.invalidArgument` when a name is unknown.
    public static func allFromEnvironment(variable: String = environmentVariable) throws(RuntimeError) -> [Backend] {
        guard let value = getenv(variable).map({ String(cString: $0) }), !value.isEmpty, value != "all" else {
            return allCases
        }
        var backends: [Backend] = []
        for name in value.split(separator: ",") { backends.append(try Backend(named: String(name))) }
        return backends
    }

    /// Runs `body` on this backend, blocking the calling thread (for `main`).
    public func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        switch self {
        case .uv: try UVRuntime.run(body)
        case .dispatch: try DispatchRuntime.run(body)
        #if NIO
        case .nio: try NIORuntime.run(body)
        #endif
        }
    }

    /// Runs `body` on this backend from code already inside Swift concurrency.
    public func run<T>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        switch self {
        case .uv: try await UVRuntime.run(isolation: isolation, body)
        case .dispatch: try await DispatchRuntime.run(isolation: isolation, body)
        #if NIO
        case .nio: try await NIORuntime.run(isolation: isolation, body)
        #endif
        }
    }
}
