import AnyRuntime
import Runtime

for backend in Backend.allCases {
    let out = try backend.run { () async throws -> String in
        let rt = try Runtime.current
        let t0 = rt.now
        try await Runtime.sleep(for: .milliseconds(20))
        let slept = t0.duration(to: rt.now)
        let r = try await moveOnAfter(.milliseconds(30)) { _ in try await Runtime.sleep(for: .seconds(5)); return 1 }
        var log: [String] = []
        try await Runtime.withTaskGroup { g in
            for i in 0..<3 { try g.startSoon { try await Runtime.sleep(for: .milliseconds(10 * i)) } }
            log.append("started")
        }
        let b = try await Runtime.runBlocking { 42 }
        return "\(rt.name) slept \(slept) moveOn=\(String(describing: r)) log=\(log) blocking=\(b) diag=\(rt.backend.diagnostics())"
    }
    print(out)
}
