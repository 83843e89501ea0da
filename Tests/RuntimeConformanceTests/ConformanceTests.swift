import AnyRuntime
import Runtime
import RuntimeDispatch
import RuntimeTesting
import RuntimeUV
import TestSupport
import Testing

/// Every backend this package ships, as the conformance suite sees them (ANYRUNTIME_BACKEND narrows it).
let allBackends: [ConformanceBackend] = TestBackend.selected.map(\.conformanceBackend)

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
