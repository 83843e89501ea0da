import CSQLite3

#if canImport(Glibc)
import Glibc
#endif

/// The `sqlite3*` of a connection and its statement cache.
///
/// `@unchecked Sendable`: every member except ``interrupt()`` is called only by jobs on the connection's
/// single worker thread (``SQLiteConnection`` submits them to a one-thread pool, so they never overlap);
/// `sqlite3_interrupt` is documented as safe to call from any thread while the connection is open, and
/// `closed` is read under `lock` by `interrupt` and written under it by `close`.
final class SQLiteHandle: @unchecked Sendable {
    private var db: OpaquePointer?
    private var statements: [String: CachedStatement] = [:]
    /// The cancellation flag of the job running now (read by `interrupt` under `lock`).
    private var running: InterruptFlag?
    /// Cursors opened and not yet closed (under `lock`).
    private var openCursors = 0
    /// The statement being stepped now, for the progress handler (worker thread only).
    private var stepping: OpaquePointer?
    /// The running job passed its point of no return (a batch's commit): no interrupt may stop it any more.
    /// Written under `lock` by the worker, read under it by `interrupt`.
    private var pastPointOfNoReturn = false
    /// How long a statement waits for another connection's lock before failing with SQLITE_BUSY.
    private let busyTimeoutMilliseconds: Int
    /// Cached statements' SQL, oldest first.
    private var statementOrder: [String] = []

    /// A prepared statement kept for reuse, with its result columns as last read.
    struct CachedStatement {
        let statement: OpaquePointer
        var columns: [String]?
        var columnTypes: [String] = []
        /// SQLite's count of its own re-preparations of the statement when the columns were read.
        var reprepares: Int32 = 0
    }
    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)

    init(path: String?, mode: String = "rwc", busyTimeoutMilliseconds: Int32) throws(SQLError) {
        pthread_mutex_init(lock, nil)
        let access: Int32
        switch mode {
        case "ro": access = SQLITE_OPEN_READONLY
        case "rw": access = SQLITE_OPEN_READWRITE
        default: access = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE
        }
        let flags = access | SQLITE_OPEN_NOMUTEX
        var connection: OpaquePointer?
        let rc = sqlite3_open_v2(path ?? ":memory:", &connection, flags, nil)
        guard rc == SQLITE_OK, let connection else {
            let message = connection.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(connection)
            // Not initialized whole, so `deinit` will not run: free the lock here (AddressSanitizer found it
            // leaked by every failed open).
            pthread_mutex_destroy(lock)
            lock.deallocate()
            throw SQLError(.connection, "cannot open SQLite database: \(message)", resultCode: rc)
        }
        db = connection
        self.busyTimeoutMilliseconds = Int(busyTimeoutMilliseconds)
        // Waiting for another connection's lock, in steps that check for cancellation (sqlite3_busy_timeout's
        // wait would hold a cancelled statement for the whole timeout; an interrupt does not reach it).
        sqlite3_busy_handler(connection, { context, attempt in
            guard let context else { return 0 }
            return Unmanaged<SQLiteHandle>.fromOpaque(context).takeUnretainedValue().keepWaitingWhenBusy(attempt: Int(attempt)) ? 1 : 0
        }, Unmanaged.passUnretained(self).toOpaque())  // the handle owns the connection: it outlives the handler
        sqlite3_extended_result_codes(connection, 1)
        do {
            _ = try run("PRAGMA foreign_keys = ON", [])
            if path != nil {
                _ = try run("PRAGMA journal_mode = WAL", [])
                _ = try run("PRAGMA synchronous = NORMAL", [])
            }
        } catch {
            close()
            throw error
        }
    }

    deinit {
        pthread_mutex_destroy(lock)
        lock.deallocate()
    }

    /// Interrupts the job `flag` belongs to, if it is still running. Any thread.
    ///
    /// A cancellation can be delivered late — after its job finished, while the next one runs (the waker
    /// fires on another thread). `sqlite3_interrupt` would then stop a statement nobody cancelled, so it is
    /// called only while `flag`'s job holds the connection, checked under the lock the worker takes to end it.
    ///
    /// Not while a cursor is open: SQLite clears its interrupt only when no statement is active, so the open
    /// cursor's next step — and every statement until the cursor ends — would fail too. The progress and busy
    /// handlers, which check `flag`, stop the running statement then.
    func interrupt(_ flag: InterruptFlag) {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if let db, running === flag, openCursors == 0, !pastPointOfNoReturn { sqlite3_interrupt(db) }
    }

    /// SQLite's busy handler: sleep a little and try again, until the busy timeout has passed or the running
    /// job was cancelled. Worker thread (inside a statement).
    fileprivate func keepWaitingWhenBusy(attempt: Int) -> Bool {
        func cancelled() -> Bool {
            pthread_mutex_lock(lock)
            defer { pthread_mutex_unlock(lock) }
            return running?.isSet == true
        }
        // Steps of 1, 2, … 10 ms, then 10 ms: short waits first, as SQLite's own handler does.
        func step(_ attempt: Int) -> Int { min(attempt + 1, 10) }
        let waited = attempt < 10 ? (0..<attempt).reduce(0) { $0 + step($1) } : 55 + (attempt - 10) * 10
        guard !cancelled(), waited < busyTimeoutMilliseconds else { return false }
        usleep(useconds_t(step(attempt) * 1_000))
        return !cancelled()
    }

    /// Whether no transaction is open (SQLite's autocommit mode). Worker thread only.
    var isAutocommit: Bool { db.map { sqlite3_get_autocommit($0) != 0 } ?? false }

    /// Marks the job of `flag` as running until the returned closure is called. Worker thread only.
    private func starting(_ flag: InterruptFlag?) -> () -> Void {
        guard let flag else { return {} }
        pthread_mutex_lock(lock)
        running = flag
        pastPointOfNoReturn = false
        pthread_mutex_unlock(lock)
        return { [self] in
            pthread_mutex_lock(lock)
            running = nil
            pastPointOfNoReturn = false
            pthread_mutex_unlock(lock)
        }
    }

    /// Installs the progress handler that stops the running job's statement once its flag is set. Worker
    /// thread only; remove it with `sqlite3_progress_handler(db, 0, nil, nil)` before the call returns (the
    /// handle is borrowed unretained).
    private func watchProgress(_ db: OpaquePointer) {
        // Every 1,000 virtual machine instructions SQLite asks whether to go on.
        sqlite3_progress_handler(db, 1_000, { context in
            guard let context else { return 0 }
            return Unmanaged<SQLiteHandle>.fromOpaque(context).takeUnretainedValue().progressWantsInterrupt() ? 1 : 0
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Whether the progress handler stops the statement: its job was cancelled, it has not passed its point
    /// of no return, and it is still running. SQLite asks once more as a statement returns, after it halted
    /// — for a write outside a transaction, after it committed — and an interrupt then would report a
    /// committed statement as interrupted. Worker thread only (the one writer of what it reads).
    fileprivate func progressWantsInterrupt() -> Bool {
        guard running?.isSet == true, !pastPointOfNoReturn else { return false }
        if let stepping, sqlite3_stmt_busy(stepping) == 0 { return false }
        return true
    }

    /// Marks the running job past its point of no return, unless it was cancelled already; returns whether
    /// it was. Worker thread only.
    private func passPointOfNoReturn() -> Bool {
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if running?.isSet == true { return false }
        pastPointOfNoReturn = true
        return true
    }

    /// Lets no interrupt reach the running job from now on (its clean-up, which must finish). An interrupt
    /// that came before is cleared by SQLite when the next statement starts with none active. Worker thread
    /// only.
    private func refuseInterrupts() {
        pthread_mutex_lock(lock)
        pastPointOfNoReturn = true
        pthread_mutex_unlock(lock)
    }

    func close() {
        for cached in statements.values { sqlite3_finalize(cached.statement) }
        statements.removeAll()
        statementOrder.removeAll()
        pthread_mutex_lock(lock)
        let connection = db
        db = nil
        pthread_mutex_unlock(lock)
        sqlite3_close_v2(connection)
    }

    /// Prepares (or reuses), binds, steps every row and decodes. Worker thread only.
    ///
    /// - Parameter cancelled: when set (before or during the statement), the statement stops with
    ///   ``SQLError/Kind/cancelled``.
    func run(_ sql: String, _ binds: [SQLValue], cancelled: InterruptFlag? = nil) throws(SQLError) -> RawRows {
        try run(sql, [binds], atomically: false, cancelled: cancelled)
    }

    /// Runs `sql` once per parameter set, in one job: prepared once, bound and stepped per set. With
    /// `atomically`, inside a savepoint: all sets take effect or none.
    func run(_ sql: String, _ sets: [[SQLValue]], atomically: Bool, cancelled: InterruptFlag?) throws(SQLError) -> RawRows {
        guard let db else { throw SQLError(.connection, "the SQLite connection is closed", sql: sql) }
        return try watchingCancellation(cancelled, db: db, sql: sql) { () throws(SQLError) -> RawRows in
            try run(sql, sets, atomically: atomically, cancelled: cancelled, db: db)
        }
    }

    /// Runs every statement of `script` in order, stopping at the first error (schema files, migrations).
    /// Worker thread only.
    func runScript(_ script: String, cancelled: InterruptFlag?) throws(SQLError) {
        guard let db else { throw SQLError(.connection, "the SQLite connection is closed", sql: script) }
        try watchingCancellation(cancelled, db: db, sql: script) { () throws(SQLError) in try exec(script, db: db) }
    }

    /// Runs `body` as the connection's current job: an interrupt for `cancelled` reaches it, and SQLite's
    /// progress handler stops it once the flag is set.
    private func watchingCancellation<T>(
        _ cancelled: InterruptFlag?, db: OpaquePointer, sql: String, _ body: () throws(SQLError) -> T
    ) throws(SQLError) -> T {
        let finished = starting(cancelled)
        defer { finished() }
        if let cancelled {
            guard !cancelled.isSet else { throw SQLError(.cancelled, "cancelled before it started", sql: sql) }
            watchProgress(db)
        }
        defer { if cancelled != nil { sqlite3_progress_handler(db, 0, nil, nil) } }
        return try body()
    }

    private func run(
        _ sql: String, _ sets: [[SQLValue]], atomically: Bool, cancelled: InterruptFlag?, db: OpaquePointer
    ) throws(SQLError) -> RawRows {
        let cached = try prepared(sql, db: db)
        let statement = cached.statement
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        var result = RawRows()
        guard atomically else {
            for binds in sets { try step(statement, binds, into: &result, db: db, sql: sql) }
            (result.columns, result.columnTypes) = columns(of: cached, sql: sql)
            return result
        }
        try exec("SAVEPOINT anyruntime_batch", db: db)
        do throws(SQLError) {
            for binds in sets {
                if cancelled?.isSet == true { throw SQLError(.cancelled, "cancelled", sql: sql) }
                try step(statement, binds, into: &result, db: db, sql: sql)
            }
            // The commit, outside a transaction: once under way, no interrupt may stop it (it could report a
            // committed batch as interrupted); a cancellation before it rolls the batch back.
            guard passPointOfNoReturn() else { throw SQLError(.cancelled, "cancelled", sql: sql) }
            try exec("RELEASE anyruntime_batch", db: db)
            (result.columns, result.columnTypes) = columns(of: cached, sql: sql)
        } catch {
            sqlite3_reset(statement)
            // The rollback must not be interrupted in turn: the progress handler would stop it, and the
            // RELEASE below would then keep the sets that ran; nor may a cancellation's interrupt that arrives
            // late, while it runs (the connection was then given up, though nothing had been written).
            refuseInterrupts()
            sqlite3_progress_handler(db, 0, nil, nil)
            // An interrupt or some errors make SQLite roll the whole transaction back by itself; the savepoint
            // is then gone with every set, and autocommit is on again.
            if sqlite3_get_autocommit(db) != 0 { throw error }
            // Otherwise undo every set; the savepoint then ends (ROLLBACK TO keeps it open).
            do {
                try exec("ROLLBACK TO anyruntime_batch", db: db)
                try exec("RELEASE anyruntime_batch", db: db)
            } catch let rollbackError {
                throw SQLError(
                    .connection, "the batch could not be rolled back (\(rollbackError.message)); discard the connection",
                    resultCode: rollbackError.resultCode, sql: sql)
            }
            throw error
        }
        return result
    }

    // MARK: Cursors (streaming)

    /// Prepares a statement of its own (not the cache's: a cached one could be needed while the stream is
    /// open) and binds `binds`. Worker thread only; finish with ``closeCursor(_:)``.
    func openCursor(_ sql: String, _ binds: [SQLValue]) throws(SQLError) -> SQLiteCursor {
        guard let db else { throw SQLError(.connection, "the SQLite connection is closed", sql: sql) }
        var statement: OpaquePointer?
        let (rc, hasMore) = sql.withCString { text -> (Int32, Bool) in
            var tail: UnsafePointer<CChar>?
            let rc = sqlite3_prepare_v3(db, text, -1, 0, &statement, &tail)
            let rest = tail.map { String(cString: $0) } ?? ""
            return (rc, !rest.allSatisfy { $0.isWhitespace || $0 == ";" })
        }
        guard rc == SQLITE_OK, let statement else { throw error(rc, db: db, sql: sql) }
        guard !hasMore else {
            sqlite3_finalize(statement)
            throw SQLError(.misuse, "only one statement can be executed at a time", sql: sql)
        }
        let cursor = SQLiteCursor(statement)
        pthread_mutex_lock(lock)
        openCursors += 1
        pthread_mutex_unlock(lock)
        for (offset, value) in binds.enumerated() {
            if let refusal = Self.unstorable(value, parameter: offset + 1, sql: sql) {
                closeCursor(cursor)
                throw refusal
            }
            let rc = bind(value, at: Int32(offset + 1), in: statement)
            guard rc == SQLITE_OK else {
                let failure = error(rc, db: db, sql: sql)
                closeCursor(cursor)
                throw failure
            }
        }
        return cursor
    }

    /// Steps up to `limit` rows; `nil` after the last. Worker thread only.
    func step(_ cursor: SQLiteCursor, limit: Int, sql: String, cancelled: InterruptFlag) throws(SQLError) -> RawRows? {
        guard let db, let statement = cursor.statement else { throw SQLError(.connection, "the SQLite connection is closed", sql: sql) }
        // After SQLITE_DONE another step would run the statement again from the start.
        guard !cursor.finished else { return nil }
        guard !cancelled.isSet else { throw SQLError(.cancelled, "cancelled", sql: sql) }
        let finished = starting(cancelled)
        defer { finished() }
        watchProgress(db)
        defer { sqlite3_progress_handler(db, 0, nil, nil) }
        stepping = statement
        defer { stepping = nil }
        var rows = RawRows()
        let columnCount = sqlite3_column_count(statement)
        while rows.rowCount < limit {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE {
                cursor.finished = true
                break
            }
            guard rc == SQLITE_ROW else {
                cursor.finished = true  // stepping again would start the statement over
                throw error(rc, db: db, sql: sql)
            }
            for column in 0..<columnCount { rows.values.append(value(at: column, in: statement)) }
            rows.rowCount += 1
        }
        // Read once, after the first step (when SQLite would have prepared the statement again).
        if cursor.columns == nil {
            cursor.columns = (0..<columnCount).map { String(cString: sqlite3_column_name(statement, $0)) }
            cursor.columnTypes = Self.declaredTypes(statement, columnCount)
        }
        rows.columns = cursor.columns ?? []
        rows.columnTypes = cursor.columnTypes
        return rows.isEmpty && cursor.finished ? nil : rows
    }

    /// Finalizes the cursor's statement. Worker thread only.
    func closeCursor(_ cursor: SQLiteCursor) {
        guard let statement = cursor.statement else { return }
        sqlite3_finalize(statement)
        cursor.statement = nil
        pthread_mutex_lock(lock)
        openCursors -= 1
        pthread_mutex_unlock(lock)
    }

    /// Binds one parameter set, steps every row into `result` and resets the statement.
    private func step(
        _ statement: OpaquePointer, _ binds: [SQLValue], into result: inout RawRows, db: OpaquePointer, sql: String
    ) throws(SQLError) {
        defer { sqlite3_reset(statement) }
        let parameterCount = Int(sqlite3_bind_parameter_count(statement))
        guard parameterCount == binds.count else {
            throw SQLError(
                .misuse, "the statement has \(parameterCount) parameters but \(binds.count) values were given",
                sql: sql)
        }
        for (offset, value) in binds.enumerated() {
            if let refusal = Self.unstorable(value, parameter: offset + 1, sql: sql) { throw refusal }
            let rc = bind(value, at: Int32(offset + 1), in: statement)
            guard rc == SQLITE_OK else { throw error(rc, db: db, sql: sql) }
        }
        let columnCount = sqlite3_column_count(statement)
        stepping = statement
        defer { stepping = nil }
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw error(rc, db: db, sql: sql) }
            for column in 0..<columnCount { result.values.append(value(at: column, in: statement)) }
            result.rowCount += 1
        }
        if sqlite3_stmt_readonly(statement) == 0 { result.rowsAffected += Int(sqlite3_changes(db)) }
    }

    private func exec(_ sql: String, db: OpaquePointer) throws(SQLError) {
        let rc = sqlite3_exec(db, sql, nil, nil, nil)
        guard rc == SQLITE_OK else { throw error(rc, db: db, sql: sql) }
    }

    /// Prepared statements kept per connection; beyond this the oldest is finalized.
    static let statementCacheCapacity = 256

    private func prepared(_ sql: String, db: OpaquePointer) throws(SQLError) -> CachedStatement {
        if let cached = statements[sql] { return cached }
        var statement: OpaquePointer?
        // The tail points into the C string: read it while that string exists (inside withCString).
        let (rc, hasMore) = sql.withCString { text -> (Int32, Bool) in
            var tail: UnsafePointer<CChar>?
            let rc = sqlite3_prepare_v3(db, text, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, &tail)
            let rest = tail.map { String(cString: $0) } ?? ""
            return (rc, !rest.allSatisfy { $0.isWhitespace || $0 == ";" })
        }
        guard rc == SQLITE_OK, let statement else { throw error(rc, db: db, sql: sql) }
        if hasMore {
            sqlite3_finalize(statement)
            throw SQLError(.misuse, "only one statement can be executed at a time", sql: sql)
        }
        if statements.count >= Self.statementCacheCapacity, let oldest = statementOrder.first {
            statementOrder.removeFirst()
            if let evicted = statements.removeValue(forKey: oldest) { sqlite3_finalize(evicted.statement) }
        }
        let cached = CachedStatement(statement: statement)
        statements[sql] = cached
        statementOrder.append(sql)
        return cached
    }

    /// The result columns' names and declared types of a cached statement, read once per (re)preparation:
    /// SQLite prepares a statement again by itself when the schema changed (a `SELECT *` may then have
    /// other columns), which its REPREPARE counter tells. Call after stepping (that is when it happens).
    private func columns(of cached: CachedStatement, sql: String) -> (names: [String], types: [String]) {
        let reprepares = sqlite3_stmt_status(cached.statement, SQLITE_STMTSTATUS_REPREPARE, 0)
        if let names = cached.columns, cached.reprepares == reprepares { return (names, cached.columnTypes) }
        let count = sqlite3_column_count(cached.statement)
        let names = (0..<count).map { String(cString: sqlite3_column_name(cached.statement, $0)) }
        let types = Self.declaredTypes(cached.statement, count)
        statements[sql]?.columns = names
        statements[sql]?.columnTypes = types
        statements[sql]?.reprepares = reprepares
        return (names, types)
    }

    private func error(_ rc: Int32, db: OpaquePointer, sql: String) -> SQLError {
        let message = String(cString: sqlite3_errmsg(db))
        let primary = rc & 0xFF
        let kind: SQLError.Kind
        switch primary {
        case SQLITE_CONSTRAINT: kind = .constraint
        case SQLITE_INTERRUPT: kind = .cancelled
        case SQLITE_BUSY, SQLITE_LOCKED: kind = .timeout
        case SQLITE_ERROR where message.contains("syntax error") || message.contains("incomplete input"):
            kind = .syntax
        case SQLITE_CANTOPEN, SQLITE_NOTADB, SQLITE_IOERR: kind = .connection
        default: kind = .database
        }
        return SQLError(kind, message, resultCode: rc, sql: sql)
    }
}


/// A statement being streamed.
///
/// `@unchecked Sendable`: it travels between the task and the connection's worker thread, but only jobs on
/// that one thread read or write it (``SQLiteHandle`` cursor methods), one at a time.
final class SQLiteCursor: @unchecked Sendable {
    var statement: OpaquePointer?
    var finished = false
    /// The result's column names and declared types, read after the first step.
    var columns: [String]?
    var columnTypes: [String] = []
    init(_ statement: OpaquePointer) { self.statement = statement }
}
