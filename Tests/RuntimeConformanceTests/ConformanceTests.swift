import Foundation
import AnyRuntime
import Runtime
import RuntimeDispatch
import RuntimeTesting
import RuntimeUV
import TestSupport
import Testing

/// Every backend this package ships, as the conformance suite sees them (ANYRUNTIME_BACKEND narrows it).
let allBackends: [ConformanceBackend] = TestBackend.selected.map(\.conformanceBackend)

/// The conformance tests to run: all, or those whose identifier starts with one of the comma-separated
/// prefixes in `ANYRUNTIME_CONFORMANCE` (for example `n.,o.shield`), to run a few while working on them.
let selectedConformanceTests: [ConformanceTest] = {
    guard let raw = ProcessInfo.processInfo.environment["ANYRUNTIME_CONFORMANCE"], !raw.isEmpty else {
        return RuntimeConformance.tests
    }
    let prefixes = raw.split(separator: ",").map(String.init)
    return RuntimeConformance.tests.filter { test in prefixes.contains { test.id.hasPrefix($0) } }
}()

@Suite("Runtime conformance")
struct ConformanceTests {
    @Test("conformance", .limit(minutes: 1), arguments: selectedConformanceTests, allBackends)
    func conformance(_ test: ConformanceTest, on backend: ConformanceBackend) async throws {
        try await test.run(on: backend)
    }

    @Test("the suite covers every behaviour the issues list (a–s), on at least one backend")
    func suiteIsComplete() {
        #expect(!allBackends.isEmpty, "ANYRUNTIME_BACKEND names no backend: use uv, dispatch, virtual or all")
        let letters = Set(RuntimeConformance.tests.map { $0.id.prefix(1) })
        for letter in "abcdefghijklmnopqrs" {
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
