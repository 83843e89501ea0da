// What every benchmark executable shares: options, timing, the median of repetitions and the table.
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// Command-line options common to the benchmark executables.
public struct Options: Sendable {
    public var quick = false
    public var repetitions = 5
    public var only: Set<String>?
    /// The systems to run (`uv`, `dispatch`, `c`, `peers`); nil: all of them.
    public var systems: Set<String>?
    /// Where to write every figure as JSON, and the ratio chart as SVG.
    public var jsonPath: String?
    public var svgPath: String?

    /// Parses `--quick`, `--repetitions N`, `--only ID,ID…`, `--systems uv,dispatch,c,peers`, `--json PATH`,
    /// `--svg PATH`; `--help` prints `usage` and exits.
    public init(_ arguments: [String], usage: String) throws {
        var iterator = arguments.dropFirst().makeIterator()
        while let argument = iterator.next() {
            switch argument {
            case "--quick": quick = true
            case "--repetitions":
                guard let value = iterator.next().flatMap(Int.init), value > 0 else {
                    throw RuntimeError(.invalidArgument, "--repetitions needs a positive number")
                }
                repetitions = value
            case "--json":
                guard let value = iterator.next() else { throw RuntimeError(.invalidArgument, "--json needs a path") }
                jsonPath = value
            case "--svg":
                guard let value = iterator.next() else { throw RuntimeError(.invalidArgument, "--svg needs a path") }
                svgPath = value
            case "--only":
                guard let value = iterator.next() else { throw RuntimeError(.invalidArgument, "--only needs a list") }
                only = Set(value.split(separator: ",").map(String.init))
            case "--systems":
                guard let value = iterator.next() else { throw RuntimeError(.invalidArgument, "--systems needs a list") }
                let names = Set(value.split(separator: ",").map { $0.lowercased() })
                let known: Set<String> = ["uv", "dispatch", "c", "peers"]
                guard names.isSubset(of: known) else {
                    throw RuntimeError(.invalidArgument, "--systems: unknown \(names.subtracting(known).sorted().joined(separator: ", ")) (known: uv, dispatch, c, peers)")
                }
                systems = names
            case "--help", "-h":
                print(usage)
                exit(0)
            default: throw RuntimeError(.invalidArgument, "unknown argument \(argument)\n\(usage)")
            }
        }
    }

    /// The count to run: `full`, or a twentieth of it with `--quick`.
    public func count(_ full: Int) -> Int { quick ? max(1, full / 20) : full }

    /// Whether the system `name` (`uv`, `dispatch`, `c`, `peers`) was asked for.
    public func runs(_ name: String) -> Bool { systems?.contains(name) ?? true }

    /// Whether the workload `id` (or a workload starting with it) was asked for.
    public func wants(_ id: String) -> Bool { only.map { wanted in wanted.contains { id.hasPrefix($0) } } ?? true }
}

public func monotonicNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// The timings of one workload on one system.
public struct BenchmarkRow: Sendable {
    public let workload: String
    public let system: String
    public let operations: Int
    public var seconds: [Double] = []
    public var extra = ""

    public init(workload: String, system: String, operations: Int, seconds: [Double] = [], extra: String = "") {
        self.workload = workload
        self.system = system
        self.operations = operations
        self.seconds = seconds
        self.extra = extra
    }

    public var opsPerSecond: [Double] { seconds.map { Double(operations) / $0 }.sorted() }
    public var median: Double { let v = opsPerSecond; return v.isEmpty ? 0 : v[v.count / 2] }
}

/// Runs `body` once to warm up, then `repetitions` times; returns the row.
public func measure(
    _ workload: String, _ system: String, operations: Int, repetitions: Int,
    _ body: () async throws -> String
) async throws -> BenchmarkRow {
    var row = BenchmarkRow(workload: workload, system: system, operations: operations)
    _ = try await body()
    for _ in 0..<repetitions {
        let start = monotonicNanoseconds()
        row.extra = try await body()
        row.seconds.append(Double(monotonicNanoseconds() - start) / 1e9)
    }
    return row
}

/// The same for synchronous work (the C floors).
public func measureSync(
    _ workload: String, _ system: String, operations: Int, repetitions: Int, _ body: () throws -> Void
) rethrows -> BenchmarkRow {
    var row = BenchmarkRow(workload: workload, system: system, operations: operations)
    try body()
    for _ in 0..<repetitions {
        let start = monotonicNanoseconds()
        try body()
        row.seconds.append(Double(monotonicNanoseconds() - start) / 1e9)
    }
    return row
}

public func format(_ value: Double) -> String {
    if value >= 1e6 { return "\(Double(Int(value / 1e4)) / 100)M" }
    if value >= 1e3 { return "\(Double(Int(value / 10)) / 100)k" }
    return "\(Int(value))"
}

/// Prints the rows as a Markdown table, and writes the JSON and the chart the options ask for.
///
/// - Parameters:
///   - reference: which C floor each row is compared with (its ratio is to it).
///   - peer: the other libraries' rows (PostgresNIO, GRDB, Swift's global executor): each row's ratio to the
///     fastest of them is shown too.
public func report(
    _ unordered: [BenchmarkRow], options: Options, title: String, reference: FloorMatcher? = nil,
    peer: ((BenchmarkRow) -> Bool)? = nil
) throws {
    // Grouped by workload, in the order the workloads first ran; rows within a group keep their order.
    var order: [String] = []
    for row in unordered where !order.contains(row.workload) { order.append(row.workload) }
    let rows = order.flatMap { workload in unordered.filter { $0.workload == workload } }
    printTable(rows, reference: reference, peer: peer)
    var machine = utsname()
    uname(&machine)
    let release = withUnsafeBytes(of: &machine.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let context = [
        "title": title, "cores": String(sysconf(Int32(_SC_NPROCESSORS_ONLN))), "kernel": release,
        "repetitions": String(options.repetitions), "quick": String(options.quick),
    ]
    if let path = options.jsonPath { try write(json(rows, reference: reference, peer: peer, context: context), to: path) }
    if let path = options.svgPath { try write(svgChart(rows, reference: reference, title: title), to: path) }
}

/// Prints the rows as a Markdown table; with `reference`, each row's ratio to the reference row of its
/// workload (the C floor).
public func printTable(_ rows: [BenchmarkRow], reference: FloorMatcher? = nil, peer: ((BenchmarkRow) -> Bool)? = nil) {
    let ratioHeader = (reference == nil ? "" : " ratio to C |") + (peer == nil ? "" : " ratio to best peer |")
    let ratioAlign = (reference == nil ? "" : " ---: |") + (peer == nil ? "" : " ---: |")
    print("| workload | system | ops/s (median) | min – max |\(ratioHeader) note |")
    print("| --- | --- | ---: | --- |\(ratioAlign) --- |")
    for row in rows {
        let values = row.opsPerSecond
        let range = values.isEmpty ? "" : "\(format(values.first ?? 0)) – \(format(values.last ?? 0))"
        var ratio = ""
        if reference != nil {
            ratio = cFloor(of: row, in: rows, reference: reference).map { " \(Double(Int(row.median / $0.median * 100)) / 100) × |" } ?? " |"
        }
        if let peer {
            ratio += bestPeer(of: row, in: rows, peer: peer).map { " \(Double(Int(row.median / $0.median * 100)) / 100) × |" } ?? " |"
        }
        print("| \(row.workload) | \(row.system) | \(format(row.median)) | \(range) |\(ratio) \(row.extra) |")
    }
}
