import Synchronization

/// The rows of a statement, read from the database in batches as they are iterated: memory holds one batch,
/// whatever the result's size, and the database is held back while the consumer is busy (PostgreSQL: the
/// rows arrive in single-row mode and the socket is read only as rows are asked for; SQLite: the statement
/// is stepped one batch per job on the connection's thread).
///
/// Obtain one from `Connection.stream(_:parameters:batchSize:_:)`; it is valid inside that call's body only.
public struct RowStream: AsyncSequence, Sendable {
    public typealias Element = Row
    public typealias Failure = any Error

    let source: StreamSource

    public func makeAsyncIterator() -> Iterator { Iterator(source: source) }

    /// The rows as the batches the database delivers, each of at most the stream's batch size.
    public var batches: Batches { Batches(source: source) }

    public struct Iterator: AsyncIteratorProtocol {
        let source: StreamSource
        var buffer: [Row] = []
        var index = 0

        public mutating func next() async throws -> Row? {
            if index == buffer.count {
                guard let batch = try await source.nextBatch() else { return nil }
                buffer = batch
                index = 0
            }
            defer { index += 1 }
            return buffer[index]
        }
    }

    /// The rows in batches.
    public struct Batches: AsyncSequence, Sendable {
        public typealias Element = [Row]
        public typealias Failure = any Error
        let source: StreamSource

        public func makeAsyncIterator() -> Iterator { Iterator(source: source) }

        public struct Iterator: AsyncIteratorProtocol {
            let source: StreamSource
            public mutating func next() async throws -> [Row]? { try await source.nextBatch() }
        }
    }
}

/// The driver side of a stream: an open query or cursor on one connection.
final class StreamSource: Sendable {
    enum Driver: Sendable {
        case postgres(PostgresConnection)
        case sqlite(SQLiteConnection, SQLiteCursor)
    }

    private let driver: Driver
    private let sql: String
    private let batchSize: Int
    /// 0 open and idle, 1 a batch is being read, 2 closed, 3 a batch is being read and the stream must close
    /// when it ends. A stream kept past its `stream { }` call, or read by two tasks at once, gets a misuse
    /// error; a close that meets a read hands the closing over to it, so the driver is never used by two.
    private let state = Atomic<Int>(0)
    /// Set when a read failed or was cancelled part-way: the driver may have cancelled the rest of the query,
    /// so an empty answer afterwards would not mean the end. Every later read throws instead.
    private let cutShort = Mutex<String?>(nil)

    private init(driver: Driver, sql: String, batchSize: Int) {
        self.driver = driver
        self.sql = sql
        self.batchSize = batchSize
    }

    static func open(_ connection: Connection.Driver, sql: String, binds: [SQLValue], batchSize: Int) async throws -> StreamSource {
        switch connection {
        case .postgres(let postgres):
            try await postgres.openStream(sql, binds)
            return StreamSource(driver: .postgres(postgres), sql: sql, batchSize: batchSize)
        case .sqlite(let sqlite):
            let cursor = try await sqlite.openStream(sql, binds)
            return StreamSource(driver: .sqlite(sqlite, cursor), sql: sql, batchSize: batchSize)
        }
    }

    /// The next batch (at most `batchSize` rows), or `nil` after the last.
    func nextBatch() async throws -> [Row]? {
        switch state.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing).original {
        case 0: break
        case 1: throw SQLError(.misuse, "a stream is read by one task at a time", sql: sql)
        default: throw SQLError(.misuse, "the stream ended with its stream { } call", sql: sql)
        }
        if let reason = cutShort.withLock({ $0 }) {
            await endRead()
            throw SQLError(
                .cancelled,
                "the stream was cut short (\(reason)) and did not finish: the rest of its rows were not read", sql: sql)
        }
        let raw: RawRows?
        do {
            switch driver {
            case .postgres(let postgres): raw = try await postgres.nextRows(limit: batchSize, sql: sql)
            case .sqlite(let sqlite, let cursor): raw = try await sqlite.nextRows(cursor, limit: batchSize, sql: sql)
            }
        } catch {
            // Never let the stream look finished after this: the next read throws.
            let reason = error is CancellationError ? "a read was cancelled" : "a read failed: \(error)"
            cutShort.withLock { $0 = reason }
            await endRead()
            throw error
        }
        await endRead()
        guard let raw else { return nil }
        return (0..<raw.rowCount).map { raw.row($0) }
    }

    /// After a read: idle again, or — when a close came meanwhile — closed now.
    private func endRead() async {
        guard !state.compareExchange(expected: 1, desired: 0, ordering: .acquiringAndReleasing).exchanged else { return }
        state.store(2, ordering: .releasing)
        await closeDriver()
    }

    /// Ends the stream early or late: PostgreSQL cancels what is left and drains; SQLite finalizes.
    func close() async {
        while true {
            let (closedNow, current) = state.compareExchange(expected: 0, desired: 2, ordering: .acquiringAndReleasing)
            if closedNow { break }
            guard current == 1 else { return }  // closed already, or handed over
            // A read by a task the body left behind is running: it closes the stream when it ends.
            if state.compareExchange(expected: 1, desired: 3, ordering: .acquiringAndReleasing).exchanged { return }
        }
        await closeDriver()
    }

    private func closeDriver() async {
        switch driver {
        case .postgres(let postgres): await postgres.closeStream()
        case .sqlite(let sqlite, let cursor): await sqlite.closeStream(cursor)
        }
    }
}

extension Connection {
    /// Runs `sql` and hands its rows to `body` as a ``RowStream``, read in batches of `batchSize` as `body`
    /// iterates: bounded memory for results of any size. When `body` returns or throws early (or is
    /// cancelled), the rest of the query is cancelled and the connection is clean again.
    ///
    /// ```swift
    /// let total = try await connection.stream("SELECT amount FROM payments") { rows in
    ///     var total = 0
    ///     for try await row in rows { total += try row.decode(0, as: Int.self) }
    ///     return total
    /// }
    /// ```
    ///
    /// - Throws: ``SQLError``; `CancellationError`; what `body` throws.
    public func stream<T>(
        _ sql: SQL, parameters: [String: any SQLBindable] = [:], batchSize: Int = 1_000,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RowStream) async throws -> T
    ) async throws -> T {
        let binds = try sql.binds(parameters.mapValues(\.sqlValue))
        return try await stream(text: sql.text(placeholders: dialect.placeholderStyle), binds: binds, batchSize: batchSize, body)
    }

    /// ``stream(_:parameters:batchSize:isolation:_:)`` for a query built with the query builder.
    public func stream<T>(
        _ statement: some SQLStatement, parameters: [String: any SQLBindable] = [:], batchSize: Int = 1_000,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (RowStream) async throws -> T
    ) async throws -> T {
        let sql = try statement.sql(for: dialect)
        let binds = try sql.binds(parameters.mapValues(\.sqlValue))
        return try await stream(text: sql.text(placeholders: dialect.placeholderStyle), binds: binds, batchSize: batchSize, body)
    }

    private func stream<T>(
        text: String, binds: [SQLValue], batchSize: Int, isolation: isolated (any Actor)? = #isolation,
        _ body: (RowStream) async throws -> T
    ) async throws -> T {
        guard batchSize > 0 else { throw SQLError(.misuse, "the batch size must be positive, not \(batchSize)", sql: text) }
        try checkOpen(text)
        logger?.debug("stream", metadata: ["sql": "\(text)", "parameters": "\(binds.count)"])
        let source = try await StreamSource.open(driver, sql: text, binds: binds, batchSize: batchSize)
        do {
            let result = try await body(RowStream(source: source))
            await source.close()
            return result
        } catch {
            await source.close()
            throw error
        }
    }
}
