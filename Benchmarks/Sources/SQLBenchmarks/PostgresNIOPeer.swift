// The PostgreSQL peer: PostgresNIO 1.x on its own NIO event loops, in the same process run, with its fast
// paths — prepared statements (`PostgresPreparedStatement`, prepared once per connection), a single
// `PostgresConnection` for the sequential workloads and the `PostgresClient` pool for the concurrent one.
import BenchmarkSupport
import Foundation
import Logging
import PostgresNIO

struct PointSelectStatement: PostgresPreparedStatement {
    static let sql = "SELECT id, name, balance FROM accounts WHERE id = $1"
    typealias Row = (Int64, String, Int64)
    var id: Int64
    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 1)
        bindings.append(id)
        return bindings
    }
    func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
}

struct InsertAccountStatement: PostgresPreparedStatement {
    static let sql = "INSERT INTO accounts_ins (id, name, balance) VALUES ($1, $2, $3)"
    typealias Row = ()
    var id: Int64
    var name: String
    var balance: Int64
    func makeBindings() throws -> PostgresBindings {
        var bindings = PostgresBindings(capacity: 3)
        bindings.append(id)
        bindings.append(name)
        bindings.append(balance)
        return bindings
    }
    func decodeRow(_ row: PostgresRow) throws -> Row {}
}

/// Host, port, user, password and database of a `postgresql://` URL.
func postgresNIOConfiguration(_ url: String) throws -> (host: String, port: Int, user: String, password: String?, database: String?) {
    guard let components = URLComponents(string: url), let host = components.host, let user = components.user else {
        throw PeerError("PostgresNIO: cannot read host and user from the PostgreSQL URL")
    }
    let database = components.path.split(separator: "/").first.map(String.init)
    return (host, components.port ?? 5432, user, components.password, database)
}

struct PeerError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// `count` point selects one after another through `execute` (a connection's or the pool's); their checksum.
func pointSelects<Rows: AsyncSequence>(
    _ count: Int, _ execute: (PointSelectStatement) async throws -> Rows
) async throws -> String where Rows.Element == PointSelectStatement.Row {
    var checksum: Int64 = 0
    for i in 0..<count {
        for try await (id, name, balance) in try await execute(PointSelectStatement(id: Int64(i * 7919 % 100_000 + 1))) {
            checksum &+= id &+ Int64(name.utf8.count) &+ balance
        }
    }
    return "checksum \(checksum)"
}

/// PG-POINT-SEQ, PG-POINT-CONC, PG-INSERT-BULK and PG-FETCH-ALL through PostgresNIO.
func postgresNIORows(url: String, options: Options, wanted: @escaping @Sendable (String) -> Bool) async throws -> [BenchmarkRow] {
    let (host, port, user, password, database) = try postgresNIOConfiguration(url)
    let logger: Logger = {
        var logger = Logger(label: "postgres-nio")
        logger.logLevel = .error
        return logger
    }()
    var rows: [BenchmarkRow] = []
    let reps = options.repetitions

    let connectionConfiguration = PostgresConnection.Configuration(
        host: host, port: port, username: user, password: password, database: database, tls: .disable)
    let connection = try await PostgresConnection.connect(configuration: connectionConfiguration, id: 1, logger: logger)
    do {
        if wanted("POINT-SEQ") {
            let n = options.count(20_000)
            rows.append(try await measure("PG-POINT-SEQ", "PostgresNIO (one connection)", operations: n, repetitions: reps) {
                try await pointSelects(n) { try await connection.execute($0, logger: logger) }
            })
        }
        if wanted("INSERT-BULK") {
            let n = options.count(50_000)
            rows.append(try await measure("PG-INSERT-BULK", "PostgresNIO (one connection)", operations: n, repetitions: reps) {
                try await connection.query("DELETE FROM accounts_ins", logger: logger)
                try await connection.withTransaction(logger: logger) { connection in
                    for i in 1...n {
                        _ = try await connection.execute(
                            InsertAccountStatement(id: Int64(i), name: "user-\(i)", balance: Int64(i) * 10), logger: logger)
                    }
                }
                return "prepared insert per row in a transaction"
            })
        }
        if wanted("FETCH-ALL") {
            rows.append(try await measure("PG-FETCH-ALL", "PostgresNIO (one connection)", operations: 100_000, repetitions: reps) {
                var checksum: Int64 = 0
                let result = try await connection.query("SELECT id, name, balance FROM accounts", logger: logger)
                for try await (id, name, balance) in result.decode((Int64, String, Int64).self) {
                    checksum &+= id &+ Int64(name.utf8.count) &+ balance
                }
                return "checksum \(checksum)"
            })
        }
        try await connection.close()
    } catch {
        try? await connection.close()
        throw error
    }

    if wanted("POINT-CONC") || wanted("POINT-SEQ") {
        var configuration = PostgresClient.Configuration(
            host: host, port: port, username: user, password: password, database: database, tls: .disable)
        configuration.options.minimumConnections = 0
        configuration.options.maximumConnections = 8
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            if wanted("POINT-SEQ") {
                let n = options.count(20_000)
                rows.append(try await measure("PG-POINT-SEQ", "PostgresNIO (PostgresClient)", operations: n, repetitions: reps) {
                    try await pointSelects(n) { try await client.execute($0, logger: logger) }
                })
            }
            if wanted("POINT-CONC") {
                let n = options.count(50_000)
                rows.append(try await measure("PG-POINT-CONC", "PostgresNIO (PostgresClient, 8 connections)", operations: n, repetitions: reps) {
                    try await withThrowingTaskGroup(of: Void.self) { tasks in
                        for task in 0..<64 {
                            tasks.addTask {
                                for i in stride(from: task, to: n, by: 64) {
                                    for try await row in try await client.execute(PointSelectStatement(id: Int64(i * 7919 % 100_000 + 1)), logger: logger) {
                                        _ = row
                                    }
                                }
                            }
                        }
                        try await tasks.waitForAll()
                    }
                    return "64 tasks"
                })
            }
        }
    }
    return rows
}
