// SQL workloads of ../shared/benchmarks/WORKLOADS.md (PG-*, SQ-*) through SQLAsync on each backend, beside
// the raw C libraries (libpq, sqlite3) doing the same work synchronously and the peers (PostgresNIO, GRDB),
// in one process run. Median of the
// repetitions after a warm-up.
//
//   scripts/with-postgres.sh swift run -c release --package-path Benchmarks SQLBenchmarks [--quick] [--repetitions N] [--only PG,SQ-FETCH-ALL,…]
//
// PostgreSQL is the server named by ANYRUNTIME_PG_URL (scripts/with-postgres.sh starts a throw-away one);
// without it the PG rows are left out, and the output says so. SQLite is a file in a temporary folder.
import AnyRuntime
import BenchmarkSupport
import CFloors
import Logging
import Runtime
import InMemoryTracing
import MetricsTestKit
import SQLAsync
import SQLAsyncMetrics
import SQLAsyncTracing

#if canImport(Glibc)
import Glibc
#endif

let options = try Options(
    CommandLine.arguments,
    usage: "usage: SQLBenchmarks [--quick] [--repetitions N] [--only PG,SQ,PG-POINT-SEQ,SQ-FETCH-ALL,…] [--systems uv,dispatch,c,peers] [--json PATH] [--svg PATH]")
let reps = options.repetitions

enum Accounts: TableSchema {
    static let tableName = "accounts"
    static let id = Column<Int64>("id", of: Accounts.self, .primaryKey)
    static let name = Column<String>("name", of: Accounts.self)
    static let balance = Column<Int64>("balance", of: Accounts.self)
    static let columns: [any AnyColumn] = [id, name, balance]
}

enum AccountsIns: TableSchema {
    static let tableName = "accounts_ins"
    static let id = Column<Int64>("id", of: AccountsIns.self, .primaryKey)
    static let name = Column<String>("name", of: AccountsIns.self)
    static let balance = Column<Int64>("balance", of: AccountsIns.self)
    static let columns: [any AnyColumn] = [id, name, balance]
}

/// The ORM's model of an account (ORM-LOAD reads `accounts`), written as an application would.
final class Account: Model {
    typealias Schema = Accounts
    var id: Int64
    var name: String
    var balance: Int64
    init(id: Int64, name: String, balance: Int64) {
        self.id = id
        self.name = name
        self.balance = balance
    }
    init(row: Row) throws {
        id = try row.decode(0, as: Int64.self)
        name = try row.decode(1, as: String.self)
        balance = try row.decode(2, as: Int64.self)
    }
    func update(from row: Row) throws {
        id = try row.decode(Accounts.id.name)
        name = try row.decode(Accounts.name.name)
        balance = try row.decode(Accounts.balance.name)
    }
    func encode(to values: inout ColumnValues) {
        values[Accounts.id] = id
        values[Accounts.name] = name
        values[Accounts.balance] = balance
    }
}

/// The same model on `accounts_ins` (ORM-FLUSH fills it).
final class NewAccount: Model {
    typealias Schema = AccountsIns
    var id: Int64
    var name: String
    var balance: Int64
    init(id: Int64, name: String, balance: Int64) {
        self.id = id
        self.name = name
        self.balance = balance
    }
    init(row: Row) throws {
        id = try row.decode(0, as: Int64.self)
        name = try row.decode(1, as: String.self)
        balance = try row.decode(2, as: Int64.self)
    }
    func update(from row: Row) throws {
        id = try row.decode(AccountsIns.id.name)
        name = try row.decode(AccountsIns.name.name)
        balance = try row.decode(AccountsIns.balance.name)
    }
    func encode(to values: inout ColumnValues) {
        values[AccountsIns.id] = id
        values[AccountsIns.name] = name
        values[AccountsIns.balance] = balance
    }
}

let ormLoadQuery = select(all: Accounts.self).where(Accounts.id <= 10_000)
let coreLoadQuery = select(Accounts.id, Accounts.name, Accounts.balance).from(Accounts.self).where(Accounts.id <= 10_000)

/// ORM-LOAD: 10,000 accounts as objects through a session (identity map on).
func ormLoad(_ engine: Engine) async throws -> String {
    let count = try await engine.withSession { session in try await session.objects(ormLoadQuery, as: Account.self).count }
    return "\(count) objects"
}

/// The same 10,000 rows as decoded tuples through Core.
func coreLoad(_ engine: Engine) async throws -> String {
    var tuples: [(Int64, String, Int64)] = []
    try await engine.withConnection { connection in
        for row in try await connection.execute(coreLoadQuery) {
            tuples.append((try row.decode(0, as: Int64.self), try row.decode(1, as: String.self), try row.decode(2, as: Int64.self)))
        }
    }
    return "\(tuples.count) tuples"
}

/// ORM-FLUSH: new objects added to a session and flushed in one commit.
func ormFlush(_ engine: Engine, _ count: Int) async throws -> String {
    try await engine.withConnection { try await $0.execute(delete(from: AccountsIns.self)) }
    try await engine.withSession { session in
        session.addAll((1...count).map { NewAccount(id: Int64($0), name: "user-\($0)", balance: Int64($0) * 10) })
    }
    return "session flush"
}

let pointSelect = try select(Accounts.id, Accounts.name, Accounts.balance).from(Accounts.self)
    .where(Accounts.id == Parameter<Int64>("id")).compiled()
let fetchAll = try select(Accounts.id, Accounts.name, Accounts.balance).from(Accounts.self).compiled()
let insertAccount = try insert(into: AccountsIns.self).values(
    AccountsIns.id.set(Parameter<Int64>("id")), AccountsIns.name.set(Parameter<String>("name")),
    AccountsIns.balance.set(Parameter<Int64>("balance"))
).compiled()

/// The data set: 100,000 accounts, and the empty insert table.
func load(_ engine: Engine) async throws {
    try await engine.withConnection { connection in
        let metadata = Metadata(Accounts.self, AccountsIns.self)
        try await metadata.dropAll(on: connection)
        try await metadata.createAll(on: connection)
        let sets: [[String: any SQLBindable]] = (1...100_000).map { ["id": Int64($0), "name": "user-\($0)", "balance": Int64($0) * 10] }
        try await connection.withTransaction { connection in
            try await connection.executeMany(
                insert(into: Accounts.self).values(
                    Accounts.id.set(Parameter<Int64>("id")), Accounts.name.set(Parameter<String>("name")),
                    Accounts.balance.set(Parameter<Int64>("balance"))),
                parameterSets: sets)
        }
        if connection.dialect == .postgresql { try await connection.execute("ANALYZE accounts") }
    }
}

func pointSeq(_ engine: Engine, _ count: Int) async throws -> String {
    var checksum = 0
    try await engine.withConnection { connection in
        for i in 0..<count {
            let row = try await connection.execute(pointSelect, parameters: ["id": Int64(i * 7919 % 100_000 + 1)]).one()
            let id = try row.decode(0, as: Int.self)
            let name = try row.decode(1, as: String.self)
            let balance = try row.decode(2, as: Int.self)
            checksum &+= id &+ name.utf8.count &+ balance
        }
    }
    return "checksum \(checksum)"
}

func pointConc(_ engine: Engine, _ count: Int, tasks: Int) async throws -> String {
    try await Runtime.withTaskGroup { group in
        for task in 0..<tasks {
            try group.startSoon {
                for i in stride(from: task, to: count, by: tasks) {
                    try await engine.withConnection { connection in
                        let row = try await connection.execute(pointSelect, parameters: ["id": Int64(i * 7919 % 100_000 + 1)]).one()
                        _ = try row.decode(0, as: Int.self)
                        _ = try row.decode(1, as: String.self)
                        _ = try row.decode(2, as: Int.self)
                    }
                }
            }
        }
    }
    return "\(tasks) tasks"
}

func insertBulk(_ engine: Engine, _ count: Int) async throws -> String {
    try await engine.withConnection { connection in
        try await connection.execute(delete(from: AccountsIns.self))
        let sets: [[String: any SQLBindable]] = (1...count).map { ["id": Int64($0), "name": "user-\($0)", "balance": Int64($0) * 10] }
        try await connection.withTransaction { connection in
            try await connection.executeMany(insertAccount, parameterSets: sets)
        }
    }
    return "executeMany in a transaction"
}

/// PG-COPY: the bulk load through `copy(_:into:columns:)` (COPY FROM STDIN), the rows made as they are sent.
func copyBulk(_ engine: Engine, _ count: Int) async throws -> String {
    try await engine.withConnection { connection in
        try await connection.execute("TRUNCATE accounts_ins")
        let rows = (1...count).lazy.map { index -> [SQLValue] in [.integer(Int64(index)), .text("user-\(index)"), .integer(Int64(index) * 10)] }
        let copied = try await connection.copy(rows, into: "accounts_ins", columns: ["id", "name", "balance"])
        guard copied == count else { throw SQLError(.database, "PG-COPY copied \(copied) rows, not \(count)") }
    }
    return "copy(_:into:columns:)"
}

func fetchAllRows(_ engine: Engine) async throws -> String {
    var checksum = 0
    try await engine.withConnection { connection in
        for row in try await connection.execute(fetchAll) {
            checksum &+= try row.decode(0, as: Int.self) &+ row.decode(1, as: String.self).utf8.count &+ row.decode(2, as: Int.self)
        }
    }
    return "checksum \(checksum)"
}

/// Runs a C floor; its failure is an error naming the workload.
func floor(_ name: String, _ call: (UnsafeMutablePointer<CChar>, Int) -> Int32) throws {
    var error = [CChar](repeating: 0, count: 512)
    let rc = error.withUnsafeMutableBufferPointer { call($0.baseAddress!, $0.count) }
    if rc != 0 {
        throw SQLError(.database, "\(name) (C): \(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))")
    }
}

// MARK: Databases

var template = Array("/tmp/anyruntime-bench-XXXXXX".utf8CString)
guard let made = template.withUnsafeMutableBufferPointer({ $0.baseAddress.flatMap { mkdtemp($0) } }) else {
    throw SQLError(.connection, "mkdtemp failed")
}
let directory = String(cString: made)
let sqlitePath = directory + "/bench.db"
defer {
    for suffix in ["", "-wal", "-shm"] { unlink(sqlitePath + suffix) }
    rmdir(directory)
}

/// Another library's row (the peers each row is also compared with).
@Sendable func isPeer(_ row: BenchmarkRow) -> Bool { row.system.hasPrefix("PostgresNIO") || row.system.hasPrefix("GRDB") }

struct Database {
    let prefix: String
    let url: String
    let conninfo: String
    let concurrentConnections: Int
}

var databases: [Database] = []
if let pg = getenv("ANYRUNTIME_PG_URL").map({ String(cString: $0) }), !pg.isEmpty {
    databases.append(Database(prefix: "PG", url: pg, conninfo: pg, concurrentConnections: 8))
} else {
    print("(no ANYRUNTIME_PG_URL: PostgreSQL rows left out; run through scripts/with-postgres.sh)")
}
databases.append(Database(prefix: "SQ", url: "sqlite:///" + sqlitePath, conninfo: sqlitePath, concurrentConnections: 4))

var rows: [BenchmarkRow] = []
let backends = try Backend.allFromEnvironment().filter { options.runs("\($0)") }
for database in databases where options.wants(database.prefix) || options.only?.contains(where: { $0.hasPrefix(database.prefix) }) == true {
    let prefix = database.prefix
    @Sendable func wanted(_ workload: String) -> Bool { options.wants("\(prefix)-\(workload)") || options.wants(prefix) }
    var loaded = false
    if backends.isEmpty {
        // Only the C floors and peers: the data set is still loaded (through the first backend).
        var logger = Logger(label: "benchmarks")
        logger.logLevel = .warning
        let engine = try Engine(database.url, logger: logger)
        try Backend.allCases[0].run { try await load(engine); await engine.dispose() }
        loaded = true
    }
    for backend in backends {
        var pool = PoolConfiguration()
        pool.size = database.concurrentConnections
        pool.overflow = 0
        var logger = Logger(label: "benchmarks")
        logger.logLevel = .warning
        let engine = try Engine(database.url, pool: pool, logger: logger)
        let system = "SQLAsync on \(backend)"
        let (observedPool, observedLogger) = (pool, logger)
        let needsData = !loaded
        let measured = try backend.run { () async throws -> [BenchmarkRow] in
            if needsData { try await load(engine) }
            var out: [BenchmarkRow] = []
            if wanted("POINT-SEQ") {
                let n = options.count(20_000)
                out.append(try await measure("\(database.prefix)-POINT-SEQ", system, operations: n, repetitions: reps) { try await pointSeq(engine, n) })
            }
            // What observing costs per statement: metrics and tracing given to the engine with no backend
            // bootstrapped (no-op handlers), and recording into memory (a backend's work, minus its export).
            if wanted("POINT-SEQ"), backend == .uv {
                let n = options.count(20_000)
                let observers: [(String, any SQLInstrumentation)] = [
                    ("metrics + tracing, nothing bootstrapped", SQLInstrumentations([SQLMetrics(), SQLTracing()])),
                    ("metrics + tracing, recorded in memory",
                     SQLInstrumentations([SQLMetrics(factory: TestMetrics()), SQLTracing(tracer: InMemoryTracer())])),
                ]
                for (label, instrumentation) in observers {
                    let observed = try Engine(database.url, pool: observedPool, logger: observedLogger, instrumentation: instrumentation)
                    out.append(try await measure("\(database.prefix)-POINT-SEQ", "\(system) + \(label)", operations: n, repetitions: reps) {
                        try await pointSeq(observed, n)
                    })
                    await observed.dispose()
                }
            }
            if wanted("POINT-CONC") {
                let n = options.count(50_000)
                out.append(try await measure("\(database.prefix)-POINT-CONC", system, operations: n, repetitions: reps) {
                    try await pointConc(engine, n, tasks: 64)
                })
            }
            if wanted("INSERT-BULK") {
                let n = options.count(50_000)
                out.append(try await measure("\(database.prefix)-INSERT-BULK", system, operations: n, repetitions: reps) { try await insertBulk(engine, n) })
            }
            if wanted("COPY"), database.prefix == "PG" {
                let n = options.count(1_000_000)
                out.append(try await measure("PG-COPY", system, operations: n, repetitions: reps) { try await copyBulk(engine, n) })
            }
            if wanted("FETCH-ALL") {
                out.append(try await measure("\(database.prefix)-FETCH-ALL", system, operations: 100_000, repetitions: reps) { try await fetchAllRows(engine) })
            }
            if wanted("ORM-LOAD") {
                out.append(try await measure("\(database.prefix)-ORM-LOAD", system + " ORM", operations: 10_000, repetitions: reps) { try await ormLoad(engine) })
                out.append(try await measure("\(database.prefix)-ORM-LOAD", system + " Core tuples", operations: 10_000, repetitions: reps) { try await coreLoad(engine) })
            }
            if wanted("ORM-FLUSH") {
                let n = options.count(50_000)
                out.append(try await measure("\(database.prefix)-ORM-FLUSH", system + " ORM", operations: n, repetitions: reps) { try await ormFlush(engine, n) })
                out.append(try await measure("\(database.prefix)-ORM-FLUSH", system + " Core executeMany", operations: n, repetitions: reps) { try await insertBulk(engine, n) })
            }
            await engine.dispose()
            return out
        }
        loaded = true
        rows += measured
    }
    // The C floors, on the calling thread.
    let c = "C (\(database.prefix == "PG" ? "libpq" : "sqlite3"), synchronous)"
    var checksum: Int64 = 0
    let floors = options.runs("c")
    if wanted("POINT-SEQ"), floors {
        let n = Int32(options.count(20_000))
        rows.append(try measureSync("\(database.prefix)-POINT-SEQ", c, operations: Int(n), repetitions: reps) {
            try floor("POINT-SEQ") { error, size in
                database.prefix == "PG"
                    ? cf_pg_point_seq(database.conninfo, n, &checksum, error, size) : cf_sq_point_seq(database.conninfo, n, &checksum, error, size)
            }
        })
    }
    if wanted("POINT-CONC"), floors {
        // As many threads as the pool has connections, each with its own.
        let n = Int32(options.count(50_000)), threads = Int32(database.concurrentConnections)
        let name = database.prefix == "PG" ? "C (libpq, \(threads) threads)" : "C (sqlite3, \(threads) threads)"
        rows.append(try measureSync("\(database.prefix)-POINT-CONC", name, operations: Int(n), repetitions: reps) {
            try floor("POINT-CONC") { error, size in
                database.prefix == "PG"
                    ? cf_pg_point_threads(database.conninfo, n, threads, &checksum, error, size)
                    : cf_sq_point_threads(database.conninfo, n, threads, &checksum, error, size)
            }
        })
    }
    if wanted("INSERT-BULK"), floors {
        let n = Int32(options.count(50_000))
        rows.append(try measureSync("\(database.prefix)-INSERT-BULK", database.prefix == "PG" ? "C (libpq pipeline mode)" : c, operations: Int(n), repetitions: reps) {
            try floor("INSERT-BULK") { error, size in
                database.prefix == "PG"
                    ? cf_pg_insert_pipeline(database.conninfo, n, error, size) : cf_sq_insert_bulk(database.conninfo, n, error, size)
            }
        })
    }
    if wanted("COPY"), floors, database.prefix == "PG" {
        let n = Int32(options.count(1_000_000))
        rows.append(try measureSync("PG-COPY", "C (libpq COPY, synchronous)", operations: Int(n), repetitions: reps) {
            try floor("COPY") { error, size in cf_pg_copy(database.conninfo, n, error, size) }
        })
    }
    if wanted("FETCH-ALL"), floors {
        rows.append(try measureSync("\(database.prefix)-FETCH-ALL", c, operations: 100_000, repetitions: reps) {
            try floor("FETCH-ALL") { error, size in
                database.prefix == "PG"
                    ? cf_pg_fetch_all(database.conninfo, &checksum, error, size) : cf_sq_fetch_all(database.conninfo, &checksum, error, size)
            }
        })
    }

    // The peers, on their own threads (NIO event loops, GRDB's queues), awaited from the main task.
    if options.runs("peers") {
        rows += database.prefix == "PG"
            ? try await postgresNIORows(url: database.url, options: options, wanted: wanted)
            : try await grdbRows(path: sqlitePath, options: options, wanted: wanted)
    }
}

rows.sort { $0.workload < $1.workload }
try report(
    rows, options: options, title: "SQL workloads: ops/s relative to the C library", reference: { candidate, _ in candidate.system.hasPrefix("C (") },
    peer: isPeer)
