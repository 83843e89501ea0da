import Runtime
import SQLAsync

/// The SQL half of the demo: the same code on every backend, against embedded SQLite or a PostgreSQL URL.
func sqlTour(url: String) async throws -> [String] {
    let runtime = try Runtime.current
    let start = runtime.now
    func stamp() -> String {
        let tenths = start.duration(to: runtime.now).saturatingNanoseconds / 100_000
        let text = "\(tenths / 10).\(tenths % 10) ms"
        return String(repeating: " ", count: max(0, 9 - text.count)) + text
    }
    struct Account: Decodable { let id: Int; let owner: String; let balance: Int64 }

    let engine = try Engine(url)
    var log: [String] = ["\(stamp())  connected to \(engine.url)"]
    try await engine.withConnection { connection in
        let table = SQL.identifier("demo_accounts_\(UInt32.random(in: 0...UInt32.max))")
        _ = try await connection.execute(
            "CREATE TABLE \(table) (id INTEGER PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL)")

        // Inserts in one transaction; every value is a bound parameter.
        try await connection.withTransaction { connection in
            for (id, owner, balance) in [(1, "Ada", 100), (2, "Grace", 250), (3, "O'Brien; DROP TABLE x", 75)] {
                _ = try await connection.execute(
                    "INSERT INTO \(table) (id, owner, balance) VALUES (\(id), \(owner), \(Int64(balance)))")
            }
        }
        let accounts = try await connection.execute("SELECT id, owner, balance FROM \(table) ORDER BY id")
            .decode(Account.self)
        log.append("\(stamp())  inserted and read back \(accounts.count) accounts: \(accounts.map(\.owner))")

        // A transfer that fails half-way is rolled back.
        struct InsufficientFunds: Error {}
        do {
            try await connection.withTransaction { connection in
                _ = try await connection.execute("UPDATE \(table) SET balance = balance - \(500) WHERE id = \(1)")
                throw InsufficientFunds()
            }
        } catch is InsufficientFunds {
            let balance = try await connection.execute("SELECT balance FROM \(table) WHERE id = \(1)").scalar(Int64.self)
            log.append("\(stamp())  transaction rolled back: Ada's balance is still \(balance ?? -1)")
        }

        // A slow query under a timeout: cancelled on the database, the connection stays usable.
        let slow: SQL =
            engine.url.database == .postgresql
            ? "SELECT pg_sleep(5)"
            : "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c WHERE x < 0"
        let timedOut = try await moveOnAfter(.milliseconds(50)) { _ in try await connection.execute(slow) }
        log.append("\(stamp())  timeout: the slow query \(timedOut == nil ? "was cancelled after 50 ms" : "finished")")

        // A query cancelled from another task.
        try await Runtime.withTaskGroup { group in
            try group.startSoon {
                _ = try await connection.execute(slow)
            }
            try await Runtime.sleep(for: .milliseconds(20))
            group.cancel()
        }
        let total = try await connection.execute("SELECT CAST(sum(balance) AS BIGINT) FROM \(table)").scalar(Int64.self)
        log.append("\(stamp())  cancelled query: gone; next query on the same connection: total balance \(total ?? -1)")
        _ = try await connection.execute("DROP TABLE \(table)")
    }
    return log
}
