// The SQLite peer: GRDB 7 on the same database file, in the same process run, with its fast paths — cached
// statements, one `await` per query (`read`/`write`, as an async caller uses it), a `DatabasePool` for the
// concurrent reads, Codable records for the ORM rows.
import BenchmarkSupport
import GRDB

struct GRDBAccount: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "accounts"
    var id: Int64
    var name: String
    var balance: Int64
}

struct GRDBNewAccount: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "accounts_ins"
    var id: Int64
    var name: String
    var balance: Int64
}

/// SQ-POINT-SEQ, SQ-POINT-CONC, SQ-INSERT-BULK, SQ-FETCH-ALL, SQ-ORM-LOAD and SQ-ORM-FLUSH through GRDB.
func grdbRows(path: String, options: Options, wanted: @escaping @Sendable (String) -> Bool) async throws -> [BenchmarkRow] {
    var rows: [BenchmarkRow] = []
    let reps = options.repetitions
    let queue = try DatabaseQueue(path: path)
    let system = "GRDB (DatabaseQueue, await per call)"
    let pointSQL = "SELECT id, name, balance FROM accounts WHERE id = ?"

    if wanted("POINT-SEQ") {
        let n = options.count(20_000)
        rows.append(try await measure("SQ-POINT-SEQ", system, operations: n, repetitions: reps) {
            var checksum = 0
            for i in 0..<n {
                checksum &+= try await queue.read { db in
                    guard let row = try Row.fetchOne(db.cachedStatement(sql: pointSQL), arguments: [i * 7919 % 100_000 + 1]) else { return 0 }
                    let id: Int = row[0]
                    let name: String = row[1]
                    let balance: Int = row[2]
                    return id &+ name.utf8.count &+ balance
                }
            }
            return "checksum \(checksum)"
        })
    }
    if wanted("POINT-CONC") {
        let n = options.count(50_000)
        var configuration = Configuration()
        configuration.maximumReaderCount = 4
        let pool = try DatabasePool(path: path, configuration: configuration)
        rows.append(try await measure("SQ-POINT-CONC", "GRDB (DatabasePool, 4 readers)", operations: n, repetitions: reps) {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for task in 0..<64 {
                    tasks.addTask {
                        for i in stride(from: task, to: n, by: 64) {
                            _ = try await pool.read { db in
                                try Row.fetchOne(db.cachedStatement(sql: pointSQL), arguments: [i * 7919 % 100_000 + 1]).map { row -> Int in
                                    let id: Int = row[0]
                                    let name: String = row[1]
                                    let balance: Int = row[2]
                                    return id &+ name.utf8.count &+ balance
                                }
                            }
                        }
                    }
                }
                try await tasks.waitForAll()
            }
            return "64 tasks"
        })
        try pool.close()
    }
    if wanted("INSERT-BULK") {
        let n = options.count(50_000)
        rows.append(try await measure("SQ-INSERT-BULK", system, operations: n, repetitions: reps) {
            try await queue.write { db in
                try db.execute(sql: "DELETE FROM accounts_ins")
                let statement = try db.cachedStatement(sql: "INSERT INTO accounts_ins (id, name, balance) VALUES (?, ?, ?)")
                for i in 1...n { try statement.execute(arguments: [i, "user-\(i)", i * 10]) }
            }
            return "cached statement in one write transaction"
        })
    }
    if wanted("FETCH-ALL") {
        rows.append(try await measure("SQ-FETCH-ALL", system, operations: 100_000, repetitions: reps) {
            let checksum = try await queue.read { db in
                var checksum = 0
                let cursor = try Row.fetchCursor(db, sql: "SELECT id, name, balance FROM accounts")
                while let row = try cursor.next() {
                    let id: Int = row[0]
                    let name: String = row[1]
                    let balance: Int = row[2]
                    checksum &+= id &+ name.utf8.count &+ balance
                }
                return checksum
            }
            return "checksum \(checksum)"
        })
    }
    if wanted("ORM-LOAD") {
        rows.append(try await measure("SQ-ORM-LOAD", "GRDB Codable records", operations: 10_000, repetitions: reps) {
            let accounts = try await queue.read { db in
                try GRDBAccount.filter(Column("id") <= 10_000).fetchAll(db)
            }
            return "\(accounts.count) records"
        })
    }
    if wanted("ORM-FLUSH") {
        let n = options.count(50_000)
        rows.append(try await measure("SQ-ORM-FLUSH", "GRDB Codable records", operations: n, repetitions: reps) {
            try await queue.write { db in
                try db.execute(sql: "DELETE FROM accounts_ins")
                for i in 1...n { try GRDBNewAccount(id: Int64(i), name: "user-\(i)", balance: Int64(i) * 10).insert(db) }
            }
            return "insert per record in one write transaction"
        })
    }
    try queue.close()
    return rows
}
