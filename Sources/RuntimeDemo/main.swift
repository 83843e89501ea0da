// The same small program on every backend: a runtime tour (a task group, a timeout that fires, a shielded
// clean-up, a socketpair readiness wait, blocking work) and an SQL tour (create, insert, query, a transaction
// rolled back, a timeout, a cancelled query) on embedded SQLite, or on PostgreSQL when given a URL:
//
//   anyruntime-demo [postgresql://user:password@host:port/database]
//
// ANYRUNTIME_BACKEND=uv|dispatch picks one backend; default: all.
import AnyRuntime
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What one run of the program saw, line by line.
func program() async throws -> [String] {
    let runtime = try Runtime.current
    let start = runtime.now
    func stamp() -> String {
        let tenths = start.duration(to: runtime.now).saturatingNanoseconds / 100_000
        let text = "\(tenths / 10).\(tenths % 10) ms"
        return String(repeating: " ", count: max(0, 9 - text.count)) + text
    }
    var log: [String] = []

    // 1. A task group: three workers finish in deadline order; the group waits for all of them.
    let finished = Recorder()
    try await Runtime.withTaskGroup { group in
        for (name, delay) in [("slow", 30), ("fast", 10), ("medium", 20)] {
            try group.startSoon {
                try await Runtime.sleep(for: .milliseconds(delay))
                finished.append(name)
            }
        }
    }
    log.append("\(stamp())  task group: workers finished in order \(finished.values)")

    // 2. A timeout that fires, with a shielded clean-up that still runs to the end.
    let cleanedUp = Recorder()
    let outcome = try await moveOnAfter(.milliseconds(25)) { _ -> String in
        do {
            try await Runtime.sleep(for: .seconds(10))
            return "slept 10 s"
        } catch {
            _ = try await withCancelScope(shield: true) { _ in
                try await Runtime.sleep(for: .milliseconds(5))  // clean-up that must not be cut short
                cleanedUp.append("done")
            }
            throw error
        }
    }
    log.append("\(stamp())  timeout: moveOnAfter(25 ms) gave \(outcome.map { "\"\($0)\"" } ?? "nil (timed out)"), shielded clean-up \(cleanedUp.values.first ?? "missing")")

    do {
        try await failAfter(.milliseconds(5)) { try await Runtime.sleep(for: .seconds(10)) }
    } catch let error as TimeoutError {
        log.append("\(stamp())  failAfter(5 ms) threw TimeoutError at deadline \(error.deadline)")
    }

    // 3. A socketpair readiness wait: one task waits until the other writes.
    var fds: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
        throw RuntimeError(.backendFailure, "socketpair failed: errno \(errno)")
    }
    for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    let (reader, writer) = (fds[0], fds[1])
    var received: UInt8 = 0
    try await Runtime.withTaskGroup { group in
        try group.startSoon {
            try await Runtime.sleep(for: .milliseconds(10))
            var byte: UInt8 = 42
            _ = write(writer, &byte, 1)
        }
        let events = try await runtime.wait(fd: reader, for: .read)
        _ = read(reader, &received, 1)
        log.append("\(stamp())  readiness: fd \(reader) became \(events), read byte \(received)")
    }
    await runtime.forget(fd: reader)
    await runtime.forget(fd: writer)
    close(reader)
    close(writer)

    // 4. Blocking work on a worker thread, bounded by the runtime's limiter.
    let onLoop = runtime.backend.isOnExecutor
    let sum = try await Runtime.runBlocking { () -> (Int, Bool) in
        usleep(5_000)  // a blocking call: never on the loop
        return ((1...1_000).reduce(0, +), runtime.backend.isOnExecutor)
    }
    log.append("\(stamp())  blocking work: sum 1...1000 = \(sum.0), ran on the executor: \(sum.1) (caller on it: \(onLoop))")
    return log
}

/// A list appended to from several tasks.
final class Recorder: Sendable {
    private let storage = Mutex<[String]>([])
    func append(_ value: String) { storage.withLock { $0.append(value) } }
    var values: [String] { storage.withLock { $0 } }
}



let databaseURL = CommandLine.arguments.dropFirst().first ?? "sqlite::memory:"
do {
    for backend in try Backend.allFromEnvironment() {
        print("== \(backend) backend: runtime")
        for line in try backend.run({ try await program() }) { print(line) }
        print("== \(backend) backend: SQL")
        for line in try backend.run({ try await sqlTour(url: databaseURL) }) { print(line) }
        print("")
    }
} catch {
    print("demo failed: \(error)")
    exit(1)
}
