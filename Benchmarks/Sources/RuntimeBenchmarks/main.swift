// Runtime workloads of ../shared/benchmarks/WORKLOADS.md (RT-*), for each backend, beside Swift's own
// global executor, in one process run. Median of the repetitions after a warm-up.
//
//   swift run -c release --package-path Benchmarks RuntimeBenchmarks [--quick] [--repetitions N] [--only RT-X,…]
import AnyRuntime
import BenchmarkSupport
import CFloors
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Lateness samples appended from many tasks.
final class Samples: Sendable {
    private let storage = Mutex<[Int64]>([])
    func append(_ value: Int64) { storage.withLock { $0.append(value) } }
    var values: [Int64] { storage.withLock { $0 } }
}

// MARK: Workloads on a runtime

func spawn(_ count: Int) async throws -> String {
    try await Runtime.withTaskGroup { group in
        for _ in 0..<count { try group.startSoon {} }
    }
    return ""
}

func pingPong(_ rounds: Int) async throws -> String {
    let (toB, fromA) = try makeMemoryChannel(of: Int.self)
    let (toA, fromB) = try makeMemoryChannel(of: Int.self)
    try await Runtime.withTaskGroup { group in
        try group.startSoon {
            for _ in 0..<rounds { try await toA.send(try await fromA.receive() + 1) }
        }
        var value = 0
        for _ in 0..<rounds {
            try await toB.send(value)
            value = try await fromB.receive()
        }
    }
    return ""
}

func fdPingPong(_ rounds: Int) async throws -> String {
    let runtime = try Runtime.current
    var fds: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
        throw RuntimeError(.backendFailure, "socketpair failed")
    }
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    let (a, b) = (fds[0], fds[1])
    @Sendable func readByte(_ fd: Int32) async throws {
        var byte: UInt8 = 0
        while read(fd, &byte, 1) != 1 { try await runtime.wait(fd: fd, for: .read) }
    }
    @Sendable func writeByte(_ fd: Int32) {
        var byte: UInt8 = 1
        _ = write(fd, &byte, 1)
    }
    try await Runtime.withTaskGroup { group in
        try group.startSoon {
            for _ in 0..<rounds {
                try await readByte(b)
                writeByte(b)
            }
        }
        for _ in 0..<rounds {
            writeByte(a)
            try await readByte(a)
        }
    }
    await runtime.forget(fd: a)
    await runtime.forget(fd: b)
    close(a)
    close(b)
    return ""
}

/// Random sleeps of 0–100 ms; returns lateness p50 / p99.
func timers(_ count: Int) async throws -> String {
    let runtime = try Runtime.current
    let lateness = Samples()
    var seed: UInt64 = 0x1234_5678
    try await Runtime.withTaskGroup { group in
        for _ in 0..<count {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let duration = Int64((seed >> 33) % 100_000_000)
            try group.startSoon {
                let deadline = runtime.now.advanced(by: .nanoseconds(duration))
                try await runtime.sleep(until: deadline)
                lateness.append(runtime.now.nanoseconds - deadline.nanoseconds)
            }
        }
    }
    return percentiles(lateness.values)
}

func percentiles(_ values: [Int64]) -> String {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return "" }
    func ms(_ q: Double) -> String {
        let ns = sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))]
        return "\(Double(ns / 10_000) / 100) ms"
    }
    return "late p50 \(ms(0.5)), p99 \(ms(0.99))"
}

func bareCheckpoints(_ count: Int) async throws -> String {
    for _ in 0..<count { try await Runtime.checkpoint() }
    return ""
}

/// One round trip per operation to a dedicated worker thread and back, the way the SQLite driver runs a
/// statement (not a standard workload: it shows what a hop costs on this machine).
func workerHops(_ count: Int) async throws -> String {
    let worker = BlockingThreadPool(maximumThreads: 1)
    defer { worker.shutdown() }
    for _ in 0..<count {
        _ = try await Runtime.withCompletion { (completion: Completion<Int>) in
            worker.submit { completion.resume(returning: 1) }
        }
    }
    return ""
}

func timeoutScopes(_ count: Int) async throws -> String {
    for _ in 0..<count {
        _ = try await moveOnAfter(.seconds(10)) { _ in try await Runtime.checkpoint() }
    }
    return ""
}

// MARK: Reference rows: Swift's global executor

func globalSpawn(_ count: Int) async -> String {
    await withDiscardingTaskGroup { group in
        for _ in 0..<count { group.addTask {} }
    }
    return ""
}

func globalPingPong(_ rounds: Int) async -> String {
    let (toB, continuationB) = AsyncStream.makeStream(of: Int.self)
    let (toA, continuationA) = AsyncStream.makeStream(of: Int.self)
    await withDiscardingTaskGroup { group in
        group.addTask {
            var iterator = toB.makeAsyncIterator()
            for _ in 0..<rounds {
                guard let value = await iterator.next() else { return }
                continuationA.yield(value + 1)
            }
        }
        var iterator = toA.makeAsyncIterator()
        var value = 0
        for _ in 0..<rounds {
            continuationB.yield(value)
            value = await iterator.next() ?? 0
        }
    }
    return ""
}

func globalTimers(_ count: Int) async -> String {
    let lateness = Samples()
    var seed: UInt64 = 0x1234_5678
    await withDiscardingTaskGroup { group in
        for _ in 0..<count {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            let duration = Int64((seed >> 33) % 100_000_000)
            group.addTask {
                let deadline = monotonicNanoseconds() + duration
                try? await Task.sleep(nanoseconds: UInt64(duration))
                lateness.append(monotonicNanoseconds() - deadline)
            }
        }
    }
    return percentiles(lateness.values)
}

/// The naive timeout: race the body against Task.sleep in a task group.
func naiveTimeouts(_ count: Int) async throws -> String {
    for _ in 0..<count {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask { await Task.yield(); return true }
            group.addTask { try await Task.sleep(for: .seconds(10)); return false }
            _ = try await group.next()
            group.cancelAll()
        }
    }
    return ""
}

/// The process's resident memory, in whole megabytes (/proc/self/statm's second field, in pages).
func residentMegabytes() -> Int {
    guard let file = fopen("/proc/self/statm", "r") else { return -1 }
    defer { fclose(file) }
    var line = [CChar](repeating: 0, count: 256)
    guard fgets(&line, Int32(line.count), file) != nil else { return -1 }
    let fields = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        .split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { Int($0) }
    guard fields.count >= 2 else { return -1 }
    return fields[1] * sysconf(Int32(_SC_PAGESIZE)) / 1_048_576
}

// MARK: Main

let options = try Options(
    CommandLine.arguments, usage: "usage: RuntimeBenchmarks [--quick] [--repetitions N] [--only RT-SPAWN,RT-FD-PINGPONG,RT-RUNS,…] [--systems uv,dispatch,c,peers] [--json PATH] [--svg PATH]")
let reps = options.repetitions
var rows: [BenchmarkRow] = []
func wanted(_ id: String) -> Bool { options.wants(id) }

for backend in try Backend.allFromEnvironment() where options.runs("\(backend)") {
    let backendRows = try backend.run { () async throws -> [BenchmarkRow] in
        var out: [BenchmarkRow] = []
        let system = "AnyRuntime \(backend)"
        if wanted("RT-SPAWN") {
            let n = options.count(100_000)
            out.append(try await measure("RT-SPAWN", system, operations: n, repetitions: reps) { try await spawn(n) })
        }
        if wanted("RT-PINGPONG") {
            let n = options.count(100_000)
            out.append(try await measure("RT-PINGPONG", system, operations: n, repetitions: reps) { try await pingPong(n) })
        }
        if wanted("RT-FD-PINGPONG") {
            let n = options.count(100_000)
            out.append(try await measure("RT-FD-PINGPONG", system, operations: n, repetitions: reps) { try await fdPingPong(n) })
        }
        if wanted("RT-TIMERS") {
            let n = options.count(10_000)
            out.append(try await measure("RT-TIMERS", system, operations: n, repetitions: reps) { try await timers(n) })
        }
        if wanted("RT-WORKER-HOP") {
            let n = options.count(100_000)
            out.append(try await measure("RT-WORKER-HOP", system, operations: n, repetitions: reps) { try await workerHops(n) })
        }
        if wanted("RT-TIMEOUT") {
            let n = options.count(1_000_000)
            out.append(try await measure("RT-TIMEOUT", system, operations: n, repetitions: reps) { try await timeoutScopes(n) })
            out.append(try await measure("RT-TIMEOUT", system + " (baseline: bare checkpoint, no scope)", operations: n, repetitions: reps) { try await bareCheckpoints(n) })
        }
        return out
    }
    rows.append(contentsOf: backendRows)
}

// RT-RUNS: whole runs started one after another (a process that starts a runtime per job or per test), with
// the resident memory after a warm-up and at the end: it must stay flat, as runs free their loop, executor
// and threads.
if wanted("RT-RUNS") {
    let n = options.count(10_000)
    for backend in try Backend.allFromEnvironment() where options.runs("\(backend)") {
        func oneRun() async throws {
            try await backend.run {
                try await Runtime.withTaskGroup { group in
                    try group.startSoon { try await Runtime.sleep(for: .microseconds(1)) }
                    _ = try await moveOnAfter(.seconds(1)) { _ in try await Runtime.checkpoint() }
                }
            }
        }
        for _ in 0..<max(1, n / 10) { try await oneRun() }  // warm-up: allocator and thread caches settle
        let warm = residentMegabytes()
        var row = try await measure("RT-RUNS", "AnyRuntime \(backend)", operations: n, repetitions: 1) {
            for _ in 0..<n { try await oneRun() }
            return ""
        }
        let end = residentMegabytes()
        row.extra = "RSS \(warm) MB after \(max(1, n / 10)) warm-up runs, \(end) MB after \(n) more"
        rows.append(row)
    }
}

// The C floors: the same fd ping-pong with the libraries' own callbacks, no Swift concurrency.
if wanted("RT-FD-PINGPONG"), options.runs("c") {
    let n = options.count(100_000)
    for (name, run) in [("C (libuv callbacks)", cf_uv_fd_pingpong), ("C (libdispatch read sources)", cf_dispatch_fd_pingpong)] as [(String, (Int32, UnsafeMutablePointer<CChar>?, Int) -> Int32)] {
        rows.append(try measureSync("RT-FD-PINGPONG", name, operations: n, repetitions: reps) {
            var error = [CChar](repeating: 0, count: 256)
            guard run(Int32(n), &error, error.count) == 0 else {
                throw RuntimeError(.backendFailure, "\(name): \(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
            }
        })
    }
}

// RT-TIMERS on libuv's own timers (millisecond resolution), no Swift concurrency.
if wanted("RT-TIMERS"), options.runs("c") {
    let n = options.count(10_000)
    var (p50, p99): (Int64, Int64) = (0, 0)
    var row = try measureSync("RT-TIMERS", "C (libuv timers)", operations: n, repetitions: reps) {
        var error = [CChar](repeating: 0, count: 256)
        var (low, high): (CLongLong, CLongLong) = (0, 0)
        guard cf_uv_timers(Int32(n), &low, &high, &error, error.count) == 0 else {
            throw RuntimeError(.backendFailure, "C (libuv timers): \(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
        }
        (p50, p99) = (Int64(low), Int64(high))
    }
    func ms(_ ns: Int64) -> String { "\(Double(ns / 10_000) / 100) ms" }
    row.extra = "late p50 \(ms(p50)), p99 \(ms(p99))"
    rows.append(row)
}

// Swift's global executor, outside any runtime.
let system = "Swift global executor"
let peers = options.runs("peers")
if wanted("RT-SPAWN"), peers {
    let n = options.count(100_000)
    rows.append(try await measure("RT-SPAWN", system, operations: n, repetitions: reps) { await globalSpawn(n) })
}
if wanted("RT-PINGPONG"), peers {
    let n = options.count(100_000)
    rows.append(try await measure("RT-PINGPONG", system + " (AsyncStream)", operations: n, repetitions: reps) { await globalPingPong(n) })
}
if wanted("RT-TIMERS"), peers {
    let n = options.count(10_000)
    rows.append(try await measure("RT-TIMERS", system + " (Task.sleep)", operations: n, repetitions: reps) { await globalTimers(n) })
}
if wanted("RT-TIMEOUT"), peers {
    let n = options.count(100_000)
    rows.append(try await measure("RT-TIMEOUT", system + " (race vs Task.sleep)", operations: n, repetitions: reps) { try await naiveTimeouts(n) })
}

try report(
    rows, options: options, title: "Runtime workloads: ops/s relative to the C floor, or to the fastest row",
    // Each backend is compared with its own library's floor: uv with libuv's callbacks, Dispatch with
    // libdispatch's read sources.
    reference: { candidate, row in
        candidate.system.hasPrefix("C (") && candidate.system.contains("libdispatch") == row.system.contains("dispatch")
    },
    peer: { $0.system.hasPrefix("Swift") })
