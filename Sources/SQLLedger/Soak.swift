import Runtime
import SQLAsync
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The soak: the ledger's mixed load (inserts, transactions, savepoints, batches, hand-ended transactions,
/// streams; three quarters cancelled at random points) on SQLite and PostgreSQL at once, round after round
/// for `minutes` on one backend. Each round is checked like a ledger run and its table emptied, so nothing
/// the soak itself keeps grows. Every minute the process's resident memory, file descriptors and threads
/// are sampled and printed as a table row.
///
/// Flat after warm-up means: the highest reading of the last quarter is within 10% + 8 MiB (memory), 4
/// descriptors and 8 threads of the highest between the end of the warm-up (the first fifth) and the middle
/// of the run. Anything else, or any ledger violation, fails the soak.
struct Soak {
    let backend: TestBackend
    let minutes: Int
    let workers: Int
    let seed: UInt64

    struct Sample {
        var minute: Int
        var operations: Int
        var cancelled: Int
        var inDoubt: Int
        var failed: Int
        var residentKiB: Int
        var descriptors: Int
        var threads: Int
    }

    /// Resident memory of this process, in KiB (`/proc/self/statm`).
    static func residentKiB() -> Int {
        guard let file = fopen("/proc/self/statm", "r") else { return -1 }
        defer { fclose(file) }
        var size = 0, resident = 0
        guard withUnsafeMutablePointer(to: &size, { size in
            withUnsafeMutablePointer(to: &resident) { resident in
                withVaList([size, resident]) { vfscanf(file, "%ld %ld", $0) }
            }
        }) == 2 else { return -1 }
        return resident * Int(sysconf(Int32(_SC_PAGESIZE))) / 1024
    }

    /// Runs the soak, printing the table; returns the problems found (none: it passed).
    func run() async throws -> [String] {
        let names = ["sqlite", "postgresql"].map { "soak_\(backend)_\($0)_\(UInt32.random(in: 0...UInt32.max))" }
        let engines = try [engine(for: "sqlite", name: names[0], workers: workers), engine(for: "postgresql", name: names[1], workers: workers)]
        let realTime = backend != .virtual
        print("Soak on \(backend): \(minutes) minutes of the ledger's load on SQLite and PostgreSQL at once, \(workers) tasks each, seed \(seed).")
        print()
        print("| minute | operations | cancelled | in doubt | failed | resident MiB | fds | threads |")
        print("|---|---|---|---|---|---|---|---|")
        var problems: [String] = []
        var samples: [Sample] = []
        let started = ContinuousClock.now
        let end = started + .seconds(60 * minutes)
        var nextSample = started + .seconds(60)
        var totals = Sample(minute: 0, operations: 0, cancelled: 0, inDoubt: 0, failed: 0, residentKiB: 0, descriptors: 0, threads: 0)
        var round: UInt64 = 0
        var failureShapes: [String: Int] = [:]
        defer {
            for suffix in ["", "-wal", "-shm"] { unlink("/tmp/\(names[0]).db\(suffix)") }
        }
        try await backend.run {
            do {
                try await soakRounds()
            } catch {
                for engine in engines { await engine.dispose() }
                throw error
            }
        }
        func soakRounds() async throws {
            for (engine, name) in zip(engines, names) {
                try await Ledger(engine: engine, operations: 0, workers: workers, realTime: realTime, table: name).prepare()
            }
            while ContinuousClock.now < end && problems.count < 10 {
                round += 1
                // One round: 400 operations on each database at once, then both checked and emptied.
                let ledgers = zip(engines, names).map { Ledger(engine: $0, operations: 400, workers: workers, realTime: realTime, table: $1) }
                let reports = ReportBox()
                let roundSeed = seed &+ round &* 7919
                try await Runtime.withTaskGroup { group in
                    for (index, ledger) in ledgers.enumerated() {
                        try group.startSoon {
                            let records = try await ledger.run(seed: roundSeed &+ UInt64(index))
                            let report = try await ledger.check(records)
                            try await ledger.prepare()
                            reports.append(report)
                        }
                    }
                }
                for report in reports.all() {
                    totals.operations += report.counts.values.reduce(0, +)
                    totals.cancelled += report.counts[.cancelled, default: 0]
                    totals.inDoubt += report.counts[.inDoubt, default: 0]
                    totals.failed += report.counts[.failed, default: 0]
                    problems += report.violations.prefix(3).map { "round \(round): \($0)" }
                    for (shape, count) in report.failures { failureShapes[shape, default: 0] += count }
                }
                for engine in engines {
                    let statistics = try engine.poolStatistics()
                    if statistics.open != statistics.idle || statistics.waiting != 0 {
                        problems.append("round \(round): the pool is not whole: \(statistics)")
                    }
                }
                let now = ContinuousClock.now
                if now >= nextSample {
                    // (A round longer than a minute skips the minutes it spanned rather than sample twice.)
                    while nextSample <= now { nextSample += .seconds(60) }
                    var sample = totals
                    sample.minute = Int((now - started).components.seconds / 60)
                    sample.residentKiB = Self.residentKiB()
                    sample.descriptors = openDescriptors()
                    sample.threads = threads()
                    samples.append(sample)
                    print("| \(sample.minute) | \(sample.operations) | \(sample.cancelled) | \(sample.inDoubt) | \(sample.failed) "
                        + "| \(sample.residentKiB / 1024).\(sample.residentKiB % 1024 * 10 / 1024) | \(sample.descriptors) | \(sample.threads) |")
                    fflush(nil)  // every output stream: the table is read while the soak runs
                }
            }
            try await engines[1].withConnection { try await $0.execute("DROP TABLE \(unsafeRaw: names[1])") }
            for engine in engines { await engine.dispose() }
        }
        if !failureShapes.isEmpty {
            print()
            print("Failures (other than cancellations), by kind:")
            for (shape, count) in failureShapes.sorted(by: { $0.value > $1.value }) { print("  \(count) × \(shape)") }
        }
        guard samples.count >= 2 else { return problems + ["the soak is too short to judge (2 minutes at least)"] }
        // Flat after warm-up: the last quarter's highest reading against the highest between the end of the
        // warm-up (the first fifth) and the middle. Descriptors and threads come and go with the load (a
        // connection given up and replaced, libdispatch's worker threads), hence a margin; a leak of one per
        // round would pass it within minutes.
        let warmUp = max(1, samples.count / 5)
        let early = samples[(warmUp - 1)..<max(warmUp, samples.count / 2)]
        let late = samples[(samples.count * 3 / 4)...]
        func peak(_ window: ArraySlice<Sample>, _ value: (Sample) -> Int) -> Int { window.map(value).max() ?? 0 }
        let (memoryBefore, memoryAfter) = (peak(early, \.residentKiB), peak(late, \.residentKiB))
        let (fdsBefore, fdsAfter) = (peak(early, \.descriptors), peak(late, \.descriptors))
        let (threadsBefore, threadsAfter) = (peak(early, \.threads), peak(late, \.threads))
        print()
        print("Highest after warm-up (minutes \(early.first?.minute ?? 0)–\(early.last?.minute ?? 0)) → in the last quarter "
            + "(minutes \(late.first?.minute ?? 0)–\(late.last?.minute ?? 0)): resident \(memoryBefore / 1024) → \(memoryAfter / 1024) MiB, "
            + "fds \(fdsBefore) → \(fdsAfter), threads \(threadsBefore) → \(threadsAfter).")
        if memoryAfter > memoryBefore + memoryBefore / 10 + 8 * 1024 {
            problems.append("resident memory grew after warm-up: \(memoryBefore / 1024) → \(memoryAfter / 1024) MiB")
        }
        if fdsAfter > fdsBefore + 4 { problems.append("file descriptors grew after warm-up: \(fdsBefore) → \(fdsAfter)") }
        if threadsAfter > threadsBefore + 8 { problems.append("threads grew after warm-up: \(threadsBefore) → \(threadsAfter)") }
        return problems
    }
}

/// The reports of one round's ledgers.
final class ReportBox: Sendable {
    private let reports = Locked<[Ledger.Report]>([])
    func append(_ report: Ledger.Report) { reports.withLock { $0.append(report) } }
    func all() -> [Ledger.Report] { reports.withLock { $0 } }
}
