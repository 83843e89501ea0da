import Logging
import Runtime
import SQLAsync
import Synchronization
import TestSupport
import Testing

/// Keeps every log line (message and metadata) in memory.
final class CapturedLogs: Sendable {
    private let lines = Locked<[String]>([])
    func append(_ line: String) { lines.withLock { $0.append(line) } }
    var all: [String] { lines.withLock { $0 } }
}

struct CapturingHandler: LogHandler {
    let sink: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        let merged = metadata.merging(event.metadata ?? [:]) { $1 }
        sink.append("\(event.level) \(event.message) \(merged.sorted { $0.key < $1.key })")
    }
}

@Suite("Logging", .limit(minutes: 1))
struct LoggingTests {
    @Test("SQL is logged at debug level with placeholders: no bound value, no password",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func noSecretsInLogs(_ backend: TestBackend, _ database: TestDatabase) async throws {
        let sink = CapturedLogs()
        let logger = Logger(label: "test") { _ in CapturingHandler(sink: sink) }
        let engine: Engine
        switch database {
        case .sqlite: engine = try Engine("sqlite::memory:", logger: logger)
        case .postgresql:
            // A password the test server does not check (trust authentication), to prove it is never logged.
            var url = "\(try postgresURL())"
            url = url.replacingOccurrences(of: "postgresql://postgres@", with: "postgresql://postgres:hunter2-secret@")
            engine = try Engine(url, logger: logger)
        }
        try await backend.run {
            try await engine.withConnection { connection in
                let secret = "credit-card-4111111111111111"
                _ = try await connection.execute("SELECT \(secret) AS value")
            }
        }
        let logs = sink.all
        // The text as sent to the database, with its dialect's placeholders.
        let sent = database == .postgresql ? "SELECT $1 AS value" : "SELECT ? AS value"
        #expect(logs.contains { $0.contains(sent) }, "the SQL was not logged: \(logs)")
        #expect(!logs.contains { $0.contains("4111111111111111") }, "a bound value reached the log")
        #expect(!logs.contains { $0.contains("hunter2") }, "the password reached the log")
    }
}

extension String {
    func replacingOccurrences(of target: String, with replacement: String) -> String {
        guard let range = firstRange(of: target) else { return self }
        var copy = self
        copy.replaceSubrange(range, with: replacement)
        return copy
    }
}
