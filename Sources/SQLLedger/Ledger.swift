import Runtime
import Synchronization
import SQLAsync
import TestSupport

/// The ledger: operations with effects a database can check (inserts, updates in transactions, commits,
/// savepoints, batches, streams), each cancelled at a random point or not at all, and afterwards a check that
/// every operation reported as done happened and every one reported cancelled or failed did not. What SQLAsync
/// promises about cancellation, tested the way it would be broken.
struct Ledger {
    /// What an operation does. Each writes the rows of its own ids, so that its effect can be looked up.
    enum Kind: String, CaseIterable, Sendable {
        /// One INSERT, autocommitted.
        case insert
        /// Two INSERTs and an UPDATE of the first in a transaction (`engine.begin`).
        case transaction
        /// An INSERT, then another in a savepoint, in one transaction.
        case savepoint
        /// Three INSERTs in one `executeMany` batch.
        case batch
        /// BEGIN, an INSERT and COMMIT through `begin()` / `commit()`, ended by hand (a cancelled one leaves
        /// its transaction open until the connection is given back).
        case manual
        /// A stream over the table, read in small batches: no effect, but it leaves a query to cancel.
        case stream

        /// How many ids (rows) the operation writes.
        var ids: Int {
            switch self {
            case .insert, .manual: 1
            case .transaction, .savepoint: 2
            case .batch: 3
            case .stream: 0
            }
        }
    }

    /// How an operation's call ended, as the caller saw it.
    enum Outcome: String, CaseIterable, Sendable {
        /// It returned: its rows must be there.
        case done
        /// It threw `CancellationError`: none of its rows may be there.
        case cancelled
        /// It threw another error: none of its rows may be there.
        case failed
        /// ``SQLError/Kind/commitInDoubt`` or ``SQLError/Kind/statementInDoubt``: all of its rows or none.
        case inDoubt
    }

    struct Operation: Sendable {
        let number: Int
        let kind: Kind
        /// The first id it writes; it writes `kind.ids` ids from here.
        var firstID: Int { number * 4 }
        var ids: Range<Int> { firstID..<firstID + kind.ids }
    }

    struct Record: Sendable {
        let operation: Operation
        let outcome: Outcome
        let error: String?
    }

    /// What a run found.
    struct Report: Sendable, CustomStringConvertible {
        var counts: [Outcome: Int] = [:]
        var violations: [String] = []
        var failures: [String: Int] = [:]

        var description: String {
            let outcomes = Outcome.allCases.map { "\($0.rawValue) \(counts[$0, default: 0])" }.joined(separator: ", ")
            return "\(outcomes); \(violations.count) violations"
        }
    }

    let engine: Engine
    let operations: Int
    let workers: Int
    /// Whether cancellations wait a random real-time moment (uv, Dispatch) or only a random number of
    /// scheduling turns (virtual time, whose clock stands still while a statement runs).
    let realTime: Bool
    /// The table's name (processes sharing a server, like the soak's, each use one of their own).
    var table = "ledger"

    /// Creates the ledger table (dropping an old one).
    func prepare() async throws {
        try await engine.withConnection { connection in
            try await connection.execute("DROP TABLE IF EXISTS \(unsafeRaw: table)")
            try await connection.execute("CREATE TABLE \(unsafeRaw: table) (id BIGINT PRIMARY KEY, note TEXT NOT NULL)")
        }
    }

    /// Runs the operations on `workers` tasks at once, each cancelled at a random point (a quarter are left
    /// alone), and returns what each call reported.
    func run(seed: UInt64) async throws -> [Record] {
        let records = RecordBox()
        try await Runtime.withTaskGroup { group in
            for worker in 0..<workers {
                try group.startSoon {
                    var random = SplitMix(seed: seed &+ UInt64(worker) &* 0x9E37_79B9)
                    for number in stride(from: worker, to: operations, by: workers) {
                        let kind = Kind.allCases[Int(random.next() % UInt64(Kind.allCases.count))]
                        let operation = Operation(number: number, kind: kind)
                        let record = try await perform(operation, random: &random)
                        records.append(record)
                    }
                }
            }
        }
        return records.all()
    }

    /// One operation in a scope of its own, which another task cancels after a random number of scheduling
    /// turns and, on a real clock, a random moment.
    private func perform(_ operation: Operation, random: inout SplitMix) async throws -> Record {
        let scope = CancelScope()
        let cancelled = random.next() % 4 != 0
        let turns = Int(random.next() % 12)
        let microseconds = Int64(random.next() % 1_000)
        let box = OutcomeBox()
        try await Runtime.withTaskGroup { group in
            if cancelled {
                try group.startSoon {
                    for _ in 0..<turns { try await Runtime.checkpoint() }
                    if realTime, microseconds > 0 { try await Runtime.sleep(for: .microseconds(microseconds)) }
                    scope.cancel()
                }
            }
            _ = try await scope.enter { _ in
                do {
                    try await execute(operation)
                    box.set(.done, nil)
                } catch is CancellationError {
                    box.set(.cancelled, nil)
                } catch let error as SQLError where error.kind == .commitInDoubt || error.kind == .statementInDoubt {
                    box.set(.inDoubt, "\(error)")
                } catch {
                    box.set(.failed, "\(error)")
                }
            }
            group.cancel()  // the canceller, if it has not fired yet
        }
        let (outcome, error) = box.get()
        return Record(operation: operation, outcome: outcome, error: error)
    }

    private func execute(_ operation: Operation) async throws {
        let first = operation.firstID
        switch operation.kind {
        case .insert:
            try await engine.withConnection { connection in
                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first), \("insert"))")
            }
        case .transaction:
            try await engine.begin { connection in
                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first), \("transaction"))")
                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first + 1), \("transaction"))")
                try await connection.execute("UPDATE \(unsafeRaw: table) SET note = \("updated") WHERE id = \(first)")
            }
        case .savepoint:
            try await engine.begin { connection in
                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first), \("outer"))")
                try await connection.withTransaction { connection in
                    try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first + 1), \("inner"))")
                }
            }
        case .batch:
            let statement: SQL = "INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(parameter: "id"), \(parameter: "note"))"
            try await engine.withConnection { connection in
                try await connection.executeMany(
                    statement, parameterSets: (0..<3).map { ["id": first + $0, "note": "batch"] })
            }
        case .manual:
            try await engine.withConnection { connection in
                let transaction = try await connection.begin()
                try await connection.execute("INSERT INTO \(unsafeRaw: table) (id, note) VALUES (\(first), \("manual"))")
                try await transaction.commit()
            }
        case .stream:
            try await engine.withConnection { connection in
                try await connection.stream("SELECT id, note FROM \(unsafeRaw: table)", batchSize: 7) { rows in
                    for try await _ in rows {}
                }
            }
        }
    }

    /// Checks the table against the records: every operation's rows are there when it was done, absent when
    /// it was cancelled or failed, all or none when in doubt; a transaction's update is there with it.
    func check(_ records: [Record]) async throws -> Report {
        let rows = try await engine.withConnection { connection in
            try await connection.execute("SELECT id, note FROM \(unsafeRaw: table)")
        }
        var notes: [Int: String] = [:]
        for row in rows { notes[try row.decode("id", as: Int.self)] = try row.decode("note", as: String.self) }
        var report = Report()
        var claimed = Set<Int>()
        for record in records {
            let operation = record.operation
            report.counts[record.outcome, default: 0] += 1
            if let error = record.error, record.outcome == .failed { report.failures[Self.shape(error), default: 0] += 1 }
            let present = operation.ids.filter { notes[$0] != nil }
            claimed.formUnion(operation.ids)
            let label = "operation \(operation.number) (\(operation.kind.rawValue), \(record.outcome.rawValue))"
            switch record.outcome {
            case .done:
                if present.count != operation.ids.count {
                    report.violations.append("\(label): done, but \(operation.ids.count - present.count) of its rows are missing")
                } else if operation.kind == .transaction, notes[operation.firstID] != "updated" {
                    report.violations.append("\(label): done, but its UPDATE is missing")
                }
            case .cancelled, .failed:
                if !present.isEmpty {
                    report.violations.append(
                        "\(label): reported \(record.outcome.rawValue), but \(present.count) of its rows are there"
                            + (record.error.map { " (\($0))" } ?? ""))
                }
            case .inDoubt:
                if !present.isEmpty, present.count != operation.ids.count {
                    report.violations.append("\(label): in doubt, and only part of it is there")
                }
            }
        }
        for id in notes.keys where !claimed.contains(id) {
            report.violations.append("row \(id) belongs to no operation")
        }
        return report
    }

    /// An error message without the numbers that differ between occurrences, for counting kinds of failure.
    static func shape(_ error: String) -> String {
        String(error.prefix(160).map { $0.isNumber ? "#" : $0 })
    }
}

/// The records of a run, appended by its workers.
final class RecordBox: Sendable {
    private let records = Locked<[Ledger.Record]>([])
    func append(_ record: Ledger.Record) { records.withLock { $0.append(record) } }
    func all() -> [Ledger.Record] { records.withLock { $0 } }
}

/// How one operation ended, set inside its scope and read after it.
final class OutcomeBox: Sendable {
    private let value = Locked<(Ledger.Outcome, String?)>((.cancelled, nil))
    func set(_ outcome: Ledger.Outcome, _ error: String?) { value.withLock { $0 = (outcome, error) } }
    func get() -> (Ledger.Outcome, String?) { value.withLock { $0 } }
}
