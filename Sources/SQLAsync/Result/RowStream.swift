import Runtime
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
            source.handedOut(1)
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
            public mutating func next() async throws -> [Row]? {
                let batch = try await source.nextBatch()
                if let batch { source.handedOut(batch.count) }
                return batch
            }
        }
    }
}

/// Who may read a stream, as a pure value: one read at a time, none once the stream is closed or was cut
/// short, and a close that meets a read handed over to it, so that the driver's cursor is never used by two.
struct StreamLifecycle: Sendable, Equatable {
    enum State: Sendable, Equatable {
        case idle
        /// A batch is being read; `closeRequested`: the stream closes when the read ends.
        case reading(closeRequested: Bool)
        case closed
    }

    private(set) var state = State.idle
    /// Set when a read failed or was cancelled part-way: the driver may have cancelled the rest of the query,
    /// so an empty answer afterwards would not mean the end. Every later read throws instead.
    private(set) var cutShort: String?

    enum ReadAction: Sendable {
        case read
        case fail(SQLError)
    }

    /// A read wants the cursor.
    mutating func startRead(sql: String) -> ReadAction {
        switch state {
        case .reading:
            return .fail(SQLError(.misuse, "a stream is read by one task at a time", sql: sql))
        case .closed:
            return .fail(SQLError(.misuse, "the stream ended with its stream { } call", sql: sql))
        case .idle:
            if let cutShort {
                return .fail(SQLError(
                    .cancelled, "the stream was cut short (\(cutShort)) and did not finish: the rest of its rows were not read",
                    sql: sql))
            }
            state = .reading(closeRequested: false)
            return .read
        }
    }

    /// A read ended (`failure`: why it did not finish). Returns whether the stream must be closed now.
    mutating func endRead(failure: String?) -> Bool {
        if let failure, cutShort == nil { cutShort = failure }
        guard case .reading(let closeRequested) = state else { return false }
        state = closeRequested ? .closed : .idle
        return closeRequested
    }

    /// The stream's call ends. Returns whether to close the cursor now (false: closed already, or the read
    /// running meanwhile closes it when it ends).
    mutating func close() -> Bool {
        switch state {
        case .idle:
            state = .closed
            return true
        case .reading:
            state = .reading(closeRequested: true)
            return false
        case .closed:
            return false
        }
    }
}

/// The driver side of a stream: an open query or cursor on one connection.
final class StreamSource: Sendable {
    private let cursor: any DriverCursor
    private let sql: String
    private let batchSize: Int
    /// A stream kept past its `stream { }` call, or read by two tasks at once, gets a misuse error.
    private let lifecycle = Locked(StreamLifecycle())
    /// The rows handed to the stream's reader so far (for the stream's span: the rows it returned).
    private let delivered = Atomic<Int>(0)

    /// The rows handed to the stream's reader so far.
    var rowsRead: Int { delivered.load(ordering: .relaxed) }

    /// Counts rows handed to the reader (a batch fetched may be left part-read).
    func handedOut(_ rows: Int) { delivered.add(rows, ordering: .relaxed) }

    /// Why the stream was cut short (a read cancelled or failed), if it was: a body that caught that and
    /// returned still did not get all the rows.
    var cutShort: String? { lifecycle.withLock { $0.cutShort } }

    private init(cursor: any DriverCursor, sql: String, batchSize: Int) {
        self.cursor = cursor
        self.sql = sql
        self.batchSize = batchSize
    }

    static func open(_ driver: any DatabaseDriver, sql: String, binds: [SQLValue], batchSize: Int) async throws -> StreamSource {
        StreamSource(cursor: try await driver.openCursor(sql, binds), sql: sql, batchSize: batchSize)
    }

    /// The next batch (at most `batchSize` rows), or `nil` after the last.
    func nextBatch() async throws -> [Row]? {
        if case .fail(let error) = lifecycle.withLock({ $0.startRead(sql: sql) }) { throw error }
        let raw: RawRows?
        do {
            raw = try await cursor.next(limit: batchSize, sql: sql)
        } catch {
            // Never let the stream look finished after this: the next read throws.
            let reason = error is CancellationError ? "a read was cancelled" : "a read failed: \(error)"
            if lifecycle.withLock({ $0.endRead(failure: reason) }) { await cursor.close() }
            throw error
        }
        if lifecycle.withLock({ $0.endRead(failure: nil) }) { await cursor.close() }
        guard let raw else { return nil }
        return (0..<raw.rowCount).map { raw.row($0) }
    }

    /// Ends the stream early or late: PostgreSQL cancels what is left and drains; SQLite finalizes.
    func close() async {
        if lifecycle.withLock({ $0.close() }) { await cursor.close() }
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
        // One span for the whole stream, the body's time included: the statement runs while it is read.
        let span = instrumentation?.statementStarted(statementInfo(text))
        let source: StreamSource
        do {
            source = try await StreamSource.open(driver, sql: text, binds: binds, batchSize: batchSize)
        } catch {
            span?.ended(rows: nil, error: error)
            throw error
        }
        do {
            let result = try await body(RowStream(source: source))
            await source.close()
            // A body that caught a read's cancellation or failure and returned did not get every row.
            span?.ended(rows: source.rowsRead, error: source.cutShort.map { SQLError(.cancelled, "the stream was cut short (\($0))", sql: text) })
            return result
        } catch {
            await source.close()
            span?.ended(rows: source.rowsRead, error: error)
            throw error
        }
    }
}
