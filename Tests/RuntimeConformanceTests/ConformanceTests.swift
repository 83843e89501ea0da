import AnyRuntime
import Runtime
import RuntimeDispatch
import RuntimeTesting
import RuntimeUV
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every backend this package ships, as the conformance suite sees them; `ANYRUNTIME_BACKEND=uv,virtual`
/// (comma-separated names, or `all`) narrows the list.
let allBackends: [ConformanceBackend] = selectBackends([
    ConformanceBackend(name: "uv") { body in try await UVRuntime.run { try await body() } },
    ConformanceBackend(name: "dispatch") { body in try await DispatchRuntime.run { try await body() } },
    .virtualTime,
])

func selectBackends(_ all: [ConformanceBackend]) -> [ConformanceBackend] {
    guard let raw = getenv(Backend.environmentVariable).map({ String(cString: $0) }), !raw.isEmpty, raw != "all"
    else { return all }
    let names = Set(raw.lowercased().split(separator: ",").map { $0 == "libuv" ? "uv" : String($0) })
    return all.filter { names.contains($0.name) }
}

@Suite("Runtime conformance")
struct ConformanceTests {
    @Test("conformance", .timeLimit(.minutes(1)), arguments: RuntimeConformance.tests, allBackends)
    func conformance(_ test: ConformanceTest, on backend: ConformanceBackend) async throws {
        try await test.run(on: backend)
    }

    @Test("the suite covers every behaviour the issue lists (a–m), on at least one backend")
    func suiteIsComplete() {
        #expect(!allBackends.isEmpty, "ANYRUNTIME_BACKEND names no backend: use uv, dispatch, virtual or all")
        let letters = Set(RuntimeConformance.tests.map { $0.id.prefix(1) })
        for letter in "abcdefghijklm" {
            #expect(letters.contains(Substring(String(letter))), "no conformance test for (\(letter))")
        }
    }

    @Test("the synchronous entry points run on the calling thread's loop and return the body's value")
    func synchronousEntryPoints() throws {
        for backend in Backend.allCases {
            let value = try backend.run { () async throws -> String in
                try await Runtime.sleep(for: .milliseconds(1))
                return try Runtime.current.name
            }
            #expect(value == backend.rawValue)
        }
        let virtual = try VirtualTimeRuntime.run { () async throws -> Duration in
            let runtime = try Runtime.current
            let start = runtime.now
            try await Runtime.sleep(for: .seconds(3600))
            return start.duration(to: runtime.now)
        }
        #expect(virtual == .seconds(3600))
    }
}
