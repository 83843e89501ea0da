// A Hummingbird app whose routes use SQLAsync on the app's own event loop.
//
//   DATABASE_URL=postgresql://… swift run HummingbirdExample [--port 8080]   (default: a SQLite file in /tmp)
//
// The URL comes from the environment, not the command line, which every user of the machine can read.
//
//   GET /accounts/:id   one account, as JSON
//   GET /slow           a query that takes 30 s; a client that goes away cancels it (on PostgreSQL, on the
//                       server too), and the cancellation is counted
//   GET /stats          how many slow queries were cancelled, and the pool's counts
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import Runtime
import RuntimeNIO
import SQLAsync
import SQLAsyncServiceLifecycle
import Synchronization

struct Account: Decodable, ResponseEncodable {
    let id: Int
    let owner: String
    let balance: Int
}

struct Stats: ResponseEncodable {
    let cancelledSlowQueries: Int
    let open: Int
    let idle: Int
}

var arguments = Array(CommandLine.arguments.dropFirst())
var port = 8080
if let index = arguments.firstIndex(of: "--port"), index + 1 < arguments.count, let value = Int(arguments[index + 1]) {
    port = value
    arguments.removeSubrange(index...index + 1)
}
let url = ProcessInfo.processInfo.environment["DATABASE_URL"] ?? "sqlite:////tmp/anyruntime-hummingbird-example.db"
let logger: Logger = {
    var logger = Logger(label: "example")
    logger.logLevel = .info
    return logger
}()

// One runtime on one of the application's event loops, for as long as the app runs. Route handlers join it
// with `host.run`: their SQL work runs on that loop and shares one connection pool.
let host = try NIORuntimeHost(on: MultiThreadedEventLoopGroup.singleton.next())
let engine = try Engine(url, logger: logger)
let isPostgreSQL = url.hasPrefix("postgres")
let cancelled = Atomic<Int>(0)

var migrator = Migrator()
migrator.register("create accounts", sql: "CREATE TABLE IF NOT EXISTS accounts (id integer PRIMARY KEY, owner text NOT NULL, balance integer NOT NULL)")
migrator.register("seed accounts", sql: "INSERT INTO accounts (id, owner, balance) VALUES (1, 'Ada', 100), (2, 'Grace', 250)")
let applied = try await host.run { try await migrator.migrate(engine) }
logger.info("migrations applied now: \(applied)")

let router = Router()
router.get("/accounts/:id") { _, context -> Account in
    let id = try context.parameters.require("id", as: Int.self)
    let found = try await host.run {
        try await engine.withConnection { connection in
            try await connection.execute("SELECT id, owner, balance FROM accounts WHERE id = \(id)").first()?.decode(Account.self)
        }
    }
    guard let found else { throw HTTPError(.notFound) }
    return found
}
router.get("/slow") { request, _ -> String in
    // Cancelled when the client closes its connection: the handler's task is cancelled, and with it every
    // runtime wait inside `host.run` (a PostgreSQL query gets a cancel request; "cancelled" means it did
    // not happen).
    do {
        return try await request.body.consumeWithCancellationOnInboundClose { _ in
            try await host.run {
                let slow: SQL = isPostgreSQL
                    ? "SELECT 'done' FROM pg_sleep(30)"
                    : "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000000) SELECT 'done' FROM n WHERE i = 100000000"
                return try await engine.withConnection { try await $0.execute(slow).scalar(String.self) } ?? ""
            }
        }
    } catch is CancellationError {
        cancelled.add(1, ordering: .relaxed)
        logger.info("a slow query was cancelled: its client went away")
        throw CancellationError()
    }
}
router.get("/stats") { _, _ -> Stats in
    let statistics = try await host.run { try engine.poolStatistics() }
    return Stats(cancelledSlowQueries: cancelled.load(ordering: .relaxed), open: statistics.open, idle: statistics.idle)
}

// Shut down in reverse order on SIGTERM or SIGINT: the server stops, the engine drains and closes, then the
// runtime ends.
let app = Application(
    router: router,
    configuration: .init(address: .hostname("127.0.0.1", port: port)),
    services: [host, EngineService(engine, runtime: host.runtime, drainTimeout: .seconds(10))],
    logger: logger)
try await app.runService()
