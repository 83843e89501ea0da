import CSQLite3
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The rows a statement produced, fully decoded, plus its counters.
struct RawRows: Sendable {
    var columns: [String] = []
    /// The database's type of each column (see ``QueryResult/columnTypes``).
    var columnTypes: [String] = []
    /// Every row's values one after another, `columns.count` per row: one array for the whole result rather
    /// than one per row (an allocation and a free per row, which SQ-FETCH-ALL measured).
    var values: [SQLValue] = []
    var rowCount = 0
    var rowsAffected = 0

    var isEmpty: Bool { rowCount == 0 }

    /// Appends another batch of rows with the same columns.
    mutating func append(_ other: RawRows) {
        if columns.isEmpty {
            columns = other.columns
            columnTypes = other.columnTypes
        }
        values.append(contentsOf: other.values)
        rowCount += other.rowCount
    }

    /// The rows as separate arrays (for tests and diagnostics; not for hot paths).
    var rows: [[SQLValue]] {
        let width = columns.count
        return (0..<rowCount).map { Array(values[$0 * width..<($0 + 1) * width]) }
    }

    /// Row `index` as a ``Row`` sharing the storage.
    func row(_ index: Int) -> Row { Row(columns: columns, storage: values, offset: index * columns.count) }
}

/// One SQLite connection. It owns a thread: every statement is one job on it (prepare or take from the cache,
/// bind, step every row, decode), so the runtime's executor never blocks and a statement costs one hop.
///
/// Cancellation interrupts the running statement with `sqlite3_interrupt`, which is safe from any thread; the
/// call then throws `CancellationError` and the connection stays usable.
final class SQLiteConnection: Sendable {
    private let worker: BlockingThreadPool
    private let handle: SQLiteHandle
    /// Whether SQLite had a transaction open after the last job (`sqlite3_get_autocommit`, read on the
    /// connection's thread at the end of each job): the database's own word, raw `BEGIN`s included.
    private let inTransaction = Atomic<Bool>(false)

    /// Whether a transaction was open on the database after the last statement.
    var isInTransaction: Bool { inTransaction.load(ordering: .acquiring) }

    private init(handle: SQLiteHandle, worker: BlockingThreadPool) {
        self.handle = handle
        self.worker = worker
    }

    /// Opens `path` (`nil`: a private in-memory database). File databases use WAL.
    static func open(path: String?, mode: String = "rwc", busyTimeoutMilliseconds: Int32 = 5_000) async throws -> SQLiteConnection {
        let worker = BlockingThreadPool(maximumThreads: 1)
        do {
            let handle = try await Runtime.withCompletion { (completion: Completion<SQLiteHandle>) in
                worker.submit {
                    completion.resume(with: Result { () throws(SQLError) -> SQLiteHandle in
                        try SQLiteHandle(path: path, mode: mode, busyTimeoutMilliseconds: busyTimeoutMilliseconds)
                    }.mapError { $0 as any Error })
                }
            }
            return SQLiteConnection(handle: handle, worker: worker)
        } catch {
            // The open job has finished: its thread ends now instead of idling forever.
            worker.shutdown()
            throw error
        }
    }

    /// Runs every statement of `script`, one after another, in one job; stops at the first error.
    func executeScript(_ script: String) async throws {
        try await job { handle, interrupted throws(SQLError) in try handle.runScript(script, cancelled: interrupted) }
    }

    /// Runs `sql` with `binds` and returns every row.
    ///
    /// - Throws: ``SQLError`` (the SQL text, never the values); `CancellationError` when cancelled (the
    ///   statement was interrupted and the connection is clean).
    func execute(_ sql: String, _ binds: [SQLValue]) async throws -> RawRows {
        try await job { handle, interrupted throws(SQLError) in try handle.run(sql, binds, cancelled: interrupted) }
    }

    /// Runs `sql` once per parameter set in one job on the connection's thread, inside a savepoint: all sets
    /// take effect or none (also when cancelled).
    func executeMany(_ sql: String, _ sets: [[SQLValue]]) async throws -> RawRows {
        guard !sets.isEmpty else { return RawRows() }
        return try await job { handle, interrupted throws(SQLError) in
            try handle.run(sql, sets, atomically: true, cancelled: interrupted)
        }
    }

    /// Whether no transaction is open on the database: the only state a pooled connection may be reused in.
    /// Read as a job on the connection's thread (the connection is not safe to touch from two threads).
    func isIdleOutsideTransaction() async -> Bool {
        let handle = self.handle
        let idle: Bool?? = try? await withCancelScope(shield: true) { _ in
            try await Runtime.withCompletion(onCancel: .waitForCompletion) { (completion: Completion<Bool>) in
                worker.submit { completion.resume(returning: handle.isAutocommit) }
            }
        }
        return (idle ?? nil) ?? false
    }

    /// Opens a cursor over `sql` (one job).
    func openStream(_ sql: String, _ binds: [SQLValue]) async throws -> SQLiteCursor {
        let handle = self.handle
        return try await Runtime.withCompletion(onCancel: .waitForCompletion) { (completion: Completion<SQLiteCursor>) in
            worker.submit {
                completion.resume(with: Result { () throws(SQLError) -> SQLiteCursor in try handle.openCursor(sql, binds) }
                    .mapError { $0 as any Error })
            }
        }
    }

    /// Up to `limit` more rows (one job); `nil` after the last.
    func nextRows(_ cursor: SQLiteCursor, limit: Int, sql: String) async throws -> RawRows? {
        try await job { handle, interrupted throws(SQLError) in
            try handle.step(cursor, limit: limit, sql: sql, cancelled: interrupted)
        }
    }

    /// Finalizes the cursor (one job; not interrupted by cancellation).
    func closeStream(_ cursor: SQLiteCursor) async {
        let handle = self.handle
        await withUncancelledCompletion { completion in
            worker.submit {
                handle.closeCursor(cursor)
                completion.resume()
            }
        }
    }

    /// One job on the connection's thread; a cancellation interrupts it and surfaces as `CancellationError`.
    private func job<Value: Sendable>(
        _ work: @escaping @Sendable (SQLiteHandle, InterruptFlag) throws(SQLError) -> Value
    ) async throws -> Value {
        let handle = self.handle
        let interrupted = InterruptFlag()
        do {
            return try await Runtime.withCompletion(onCancel: .interrupt {
                interrupted.set()
                handle.interrupt(interrupted)
            }) { (completion: Completion<Value>) in
                worker.submit { [self] in
                    let result = Result { () throws(SQLError) -> Value in try work(handle, interrupted) }
                    inTransaction.store(!handle.isAutocommit, ordering: .releasing)
                    completion.resume(with: result.mapError { $0 as any Error })
                }
            }
        } catch let error as SQLError where interrupted.isSet && (error.kind == .cancelled || error.kind == .timeout) {
            // Interrupted, or gave up waiting for a lock because of the cancellation.
            throw CancellationError()
        }
    }

    /// Finalizes cached statements and closes the database; waits for the connection's thread to end.
    func close() async {
        let handle = self.handle
        let worker = self.worker
        await withUncancelledCompletion { completion in
            worker.submit {
                handle.close()
                completion.resume()
            }
        }
        // Its last job has run: joining the thread takes no time worth a hop.
        worker.shutdown()
    }

    /// A wait that no cancellation cuts short, or skips: clean-up must run and finish, also in a task
    /// whose scope was cancelled (a shielded scope; the work itself is short).
    private func withUncancelledCompletion(_ start: (Completion<Void>) -> Void) async {
        _ = try? await withCancelScope(shield: true) { _ in
            try await Runtime.withCompletion(onCancel: .waitForCompletion) { (completion: Completion<Void>) in
                start(completion)
            }
        }
    }

    /// Closes the database on the connection's thread, after the job running there (if any); returns at
    /// once. (The thread ends with the connection's deinit.)
    func closeDropped() {
        let handle = self.handle
        worker.submit { handle.close() }
    }

    deinit {
        // An unclosed connection still releases its thread and database.
        let handle = self.handle
        worker.submit { handle.close() }
        worker.shutdown()
    }
}

/// Set when the caller was cancelled. The statement checks it before it starts and, through SQLite's progress
/// handler, while it runs: `sqlite3_interrupt` alone is lost when it comes before the statement starts.
final class InterruptFlag: Sendable {
    private let storage = Atomic<Bool>(false)
    func set() { storage.store(true, ordering: .releasing) }
    var isSet: Bool { storage.load(ordering: .acquiring) }
}
