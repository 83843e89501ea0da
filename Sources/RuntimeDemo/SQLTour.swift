import Logging
import Runtime
import SQLAsync

/// The demo's tables, declared once for the DDL and for typed queries.
enum Owners: TableSchema {
    static let tableName = "demo_owners"
    static let id = Column<Int64>("id", of: Owners.self, .primaryKey, .autoIncrement)
    static let name = Column<String>("name", of: Owners.self, .unique)
    static let columns: [any AnyColumn] = [id, name]
}

enum Accounts: TableSchema {
    static let tableName = "demo_accounts"
    static let id = Column<Int64>("id", of: Accounts.self, .primaryKey, .autoIncrement)
    static let ownerID = Column<Int64>("owner_id", of: Accounts.self, .references(Owners.id, onDelete: .cascade))
    static let balance = Column<Int64>("balance", of: Accounts.self, .default(0))
    static let columns: [any AnyColumn] = [id, ownerID, balance]
    static let indexes = [Index(on: ownerID)]
}

/// The SQL half of the demo: the same code on every backend, against embedded SQLite or a PostgreSQL URL.
func sqlTour(url: String) async throws -> [String] {
    let runtime = try Runtime.current
    let start = runtime.now
    func stamp() -> String {
        let tenths = start.duration(to: runtime.now).saturatingNanoseconds / 100_000
        let text = "\(tenths / 10).\(tenths % 10) ms"
        return String(repeating: " ", count: max(0, 9 - text.count)) + text
    }
    struct Holding: Decodable { let name: String; let balance: Int64 }

    var logger = Logger(label: "demo")
    logger.logLevel = .warning  // the engine logs connections at info level and SQL at debug level
    let engine = try Engine(url, logger: logger)
    var log: [String] = ["\(stamp())  connected to \(engine.url)"]
    let metadata = Metadata(Owners.self, Accounts.self)
    try await engine.withConnection { connection in
        try await metadata.dropAll(on: connection)
        try await metadata.createAll(on: connection)
        log.append("\(stamp())  created \(metadata.tables.map(\.name)) (\(connection.dialect) DDL, parents first)")

        // Inserts in one transaction; every value is a bound parameter, RETURNING gives the generated keys.
        try await connection.withTransaction { connection in
            let ownerIDs = try await connection.executeMany(
                insert(into: Owners.self).values(Owners.name.set(Parameter<String>("name"))).returning(Owners.id),
                parameterSets: [["name": "Ada"], ["name": "Grace"], ["name": "O'Brien; DROP TABLE demo_owners"]]
            ).scalars(Int64.self)
            try await connection.executeMany(
                insert(into: Accounts.self).values(Accounts.ownerID.set(Parameter<Int64>("owner")), Accounts.balance.set(Parameter<Int64>("balance"))),
                parameterSets: zip(ownerIDs, [100, 250, 75] as [Int64]).map { ["owner": $0, "balance": $1] })
        }
        let holdings = try await connection.execute(
            select(Owners.name, Accounts.balance).from(Accounts.self)
                .join(Owners.self, on: Owners.id == Accounts.ownerID)
                .where(Accounts.balance > 50).orderBy(Accounts.balance.desc())
        ).decode(Holding.self)
        log.append("\(stamp())  inserted and joined: \(holdings.map { "\($0.name) \($0.balance)" })")

        // A transfer that fails half-way is rolled back.
        struct InsufficientFunds: Error {}
        let adasBalance = select(Accounts.balance).from(Accounts.self)
            .join(Owners.self, on: Owners.id == Accounts.ownerID).where(Owners.name == "Ada")
        do {
            try await connection.withTransaction { connection in
                try await connection.execute(
                    update(Accounts.self).set(Accounts.balance.set(Accounts.balance - 500))
                        .where(Accounts.ownerID.in(select(Owners.id).from(Owners.self).where(Owners.name == "Ada"))))
                throw InsufficientFunds()
            }
        } catch is InsufficientFunds {
            let balance = try await connection.execute(adasBalance).scalar(Int64.self)
            log.append("\(stamp())  transaction rolled back: Ada's balance is still \(balance ?? -1)")
        }

        // A slow query under a timeout: cancelled on the database, the connection stays usable.
        let slow: SQL =
            connection.dialect == .postgresql
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
        let total = try await connection.execute(select(Accounts.balance.sum()).from(Accounts.self)).scalar(Int64?.self)
        log.append("\(stamp())  cancelled query: gone; next query on the same connection: total balance \((total ?? nil) ?? -1)")
        try await metadata.dropAll(on: connection)
    }
    await engine.dispose()
    return log
}
