import Logging
import SQLAsync
import TestSupport

/// The databases the integration tests run on: SQLite in memory, and the suite's PostgreSQL (which fails, saying
/// why, when it cannot be started: never skipped).
enum IntegrationDatabase: String, CaseIterable, Sendable, CustomStringConvertible {
    case sqlite, postgresql
    var description: String { rawValue }

    func url() throws -> String {
        switch self {
        case .sqlite: "sqlite::memory:"
        case .postgresql: try TestPostgres.url()
        }
    }
}

let quietLogger: Logger = {
    var logger = Logger(label: "integration-tests")
    logger.logLevel = .critical
    return logger
}()
