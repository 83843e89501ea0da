import Runtime
import Synchronization

/// How a transaction isolates itself from concurrent ones.
///
/// SQLite runs every transaction serializably, so there the level is accepted and has no further effect.
public enum IsolationLevel: String, Sendable, CaseIterable {
    case readCommitted = "READ COMMITTED"
    case repeatableRead = "REPEATABLE READ"
    case serializable = "SERIALIZABLE"
}

extension Connection {
    /// How long the rollback after an error or a cancellation may take before the connection is given up.
    static let rollbackDeadline: Duration = .seconds(5)

    /// How long a COMMIT's answer is awaited once it is sent, at most: past it, or past the caller's deadline
    /// and the cancellation grace, the outcome is reported as unknown (``SQLError/Kind/commitInDoubt``) and
    /// the connection is given up.
    static let commitDeadline: Duration = .seconds(10)

    /// The deadline of clean-up that must run even for a cancelled caller (a rollback): `limit` from now, but
    /// no later than the caller's own deadline plus the grace; a caller cancelled already gets the grace.
    func cleanUpDeadline(limit: Duration) throws -> RuntimeInstant {
        let now = try Runtime.current.now
        let caller = driver.isRemote ? Runtime.currentEffectiveDeadline() : .never
        if caller == .distantPast { return now.advanced(by: grace) }
        return min(now.advanced(by: limit), caller.advanced(by: grace))
    }

    /// What a failed transaction body reports: a statement in doubt inside a transaction that can now never
    /// commit (its connection was closed) had no effect, so when the caller itself is cancelled (its deadline
    /// passed) it is reported as the cancellation it was. A doubt from a scope inside the transaction (a
    /// statement timeout, a timeout around one statement) reaches a caller that was not cancelled as it is.
    func undone(_ error: any Error) -> any Error {
        guard let error = error as? SQLError, error.kind == .statementInDoubt, isBroken,
            Runtime.currentEffectiveDeadline() == .distantPast
        else { return error }
        return CancellationError()
    }

    /// Runs `body` in a transaction: commits when it returns, rolls back when it throws or is cancelled.
    ///
    /// Called inside another transaction on the same connection, it uses a savepoint instead, so that only the
    /// inner work is undone on failure.
    ///
    /// ```swift
    /// try await connection.withTransaction(isolationLevel: .serializable) { connection in
    ///     try await connection.execute("UPDATE accounts SET balance = balance - \(amount) WHERE id = \(from)")
    ///     try await connection.execute("UPDATE accounts SET balance = balance + \(amount) WHERE id = \(to)")
    /// }
    /// ```
    ///
    /// The rollback runs in a shielded scope with its own deadline, so a cancelled caller still leaves the
    /// connection outside any transaction; if even that fails, the connection ``isBroken``.
    ///
    /// - Parameters:
    ///   - isolationLevel: the isolation level of an outermost transaction (PostgreSQL; ignored for savepoints).
    ///   - readOnly: refuse writes in an outermost transaction.
    ///   - isolation: the caller's isolation (leave the default).
    ///   - body: the work; it gets this connection.
    /// - Throws: what `body` throws, after the rollback; the commit's ``SQLError`` (for example
    ///   ``SQLError/Kind/serializationFailure``: retry the transaction).
    @discardableResult
    public func withTransaction<T>(
        isolationLevel: IsolationLevel? = nil,
        readOnly: Bool = false,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (Connection) async throws -> T
    ) async throws -> T {
        guard let instrumentation else {
            return try await transactionBody(isolationLevel: isolationLevel, readOnly: readOnly, body)
        }
        let info = SQLTransactionInfo(
            system: pool?.system ?? .sqlite, namespace: pool?.namespace, isNested: transactionDepth.withLock { $0 } > 0, readOnly: readOnly)
        return try await instrumentation.transaction(info) {
            try await transactionBody(isolationLevel: isolationLevel, readOnly: readOnly, body)
        }
    }

    private func transactionBody<T>(
        isolationLevel: IsolationLevel?, readOnly: Bool, _ body: (Connection) async throws -> T
    ) async throws -> T {
        let savepoint = try await begin(isolation: isolationLevel, readOnly: readOnly)
        let result: T
        do {
            result = try await body(self)
        } catch {
            await rollBackShielded(savepoint)
            throw undone(error)
        }
        do {
            try await commit(savepoint)
        } catch {
            await rollBackShielded(savepoint)
            throw error
        }
        return result
    }

    /// Starts a transaction (or, inside one, a savepoint) that you end yourself with ``Transaction/commit()``
    /// or ``Transaction/rollback()``. Prefer ``withTransaction(isolationLevel:readOnly:isolation:_:)``, which
    /// cannot forget to end it; a connection given back with a transaction still open is closed, not reused.
    ///
    /// ```swift
    /// let transaction = try await connection.begin()
    /// try await connection.execute("UPDATE accounts SET balance = 0")
    /// try await transaction.commit()
    /// ```
    public func begin(isolationLevel: IsolationLevel? = nil, readOnly: Bool = false) async throws -> Transaction {
        Transaction(connection: self, savepoint: try await begin(isolation: isolationLevel, readOnly: readOnly))
    }

    /// Starts a transaction, or a savepoint inside one; returns the savepoint's name (nil for a transaction).
    func begin(isolation: IsolationLevel?, readOnly: Bool) async throws -> String? {
        let depth = transactionDepth.withLock { $0 }
        if depth == 0, isInTransaction {
            // A raw BEGIN (or a transaction some statement left open): a managed transaction inside it would
            // commit or roll back the caller's outer one behind its back.
            throw SQLError(
                .misuse,
                "a transaction is already open on this connection, begun with raw SQL: end it with COMMIT or ROLLBACK "
                    + "before withTransaction/begin, or use them for both")
        }
        if depth > 0 {
            let name = "anyruntime_sp_\(depth)"
            transactionDepth.withLock { $0 += 1 }
            do {
                _ = try await execute(.unsafeRaw("SAVEPOINT \(name)"))
            } catch {
                // The savepoint may or may not exist; the enclosing transaction ends it either way.
                transactionDepth.withLock { $0 -= 1 }
                throw error
            }
            return name
        }
        // Recorded before BEGIN is sent: a cancellation can land after the server started the transaction but
        // before the reply arrived, and the rollback below must then still happen.
        transactionDepth.withLock { $0 = 1 }
        readOnlyTransaction.withLock { $0 = readOnly }
        do {
            for statement in driver.beginStatements(isolation: isolation, readOnly: readOnly) {
                _ = try await execute(.unsafeRaw(statement))
            }
        } catch {
            await rollBackShielded(nil)
            throw undone(error)
        }
        return nil
    }

    func commit(_ savepoint: String?) async throws {
        if let savepoint {
            _ = try await execute(.unsafeRaw("RELEASE SAVEPOINT \(savepoint)"))
            transactionDepth.withLock { $0 -= 1 }
            return
        }
        if driver.isInFailedTransaction {
            // PostgreSQL answers COMMIT with ROLLBACK here: say so instead of reporting a commit.
            throw SQLError(
                .database,
                "the transaction cannot commit: a statement in it failed (its error was caught inside the transaction); it is rolled back")
        }
        // The point of no return. Not sent from code that is cancelled already (then nothing happened); once
        // sent, its answer is awaited shielded, within its own deadline, so that a cancellation cannot report
        // a commit that happened as cancelled. The caller's next checkpoint sees the cancellation.
        try Runtime.checkCancellation()
        // Shielded up to the caller's deadline (or the commit's own, if sooner); past it, the driver waits the
        // cancellation grace for the answer before the outcome is called unknown.
        let caller = driver.isRemote ? Runtime.currentEffectiveDeadline() : .never
        let outcome: Result<Void, any Error>?? = try? await withCancelScope(
            deadline: min(Runtime.current.now.advanced(by: Self.commitDeadline), caller), shield: true
        ) { _ in
            do {
                _ = try await execute("COMMIT")
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        switch outcome ?? nil {
        case .success?:
            await endTransaction()
        case .failure(let error as SQLError)? where error.kind == .connection:
            markBroken()
            throw SQLError(
                .commitInDoubt,
                "the connection was lost after COMMIT was sent and before its answer: the transaction may or may not "
                    + "have committed (\(error.message))", sqlState: error.sqlState, sql: "COMMIT")
        case .failure(let error as SQLError)? where error.kind == .statementInDoubt:
            markBroken()
            throw SQLError(.commitInDoubt, error.message, sql: "COMMIT")
        case nil, .failure(is CancellationError)?:
            // The commit's own deadline passed (only it reaches inside the shield): the wait for the answer
            // was given up, and the outcome is unknown.
            markBroken()
            throw SQLError(
                .commitInDoubt,
                "COMMIT was sent and no answer came in time (within \(Self.commitDeadline), or the caller's deadline "
                    + "and \(grace)): the transaction may or may not have committed", sql: "COMMIT")
        case .failure(let error)?:
            throw error
        }
    }

    /// Rolls back the transaction or savepoint, shielded, within ``rollbackDeadline``; marks the connection
    /// broken when that is not possible.
    func rollBackShielded(_ savepoint: String?) async {
        let rolledBack: Bool? = try? await withCancelScope(
            deadline: cleanUpDeadline(limit: Self.rollbackDeadline), shield: true
        ) { _ in
            do {
                if let savepoint {
                    _ = try await execute(.unsafeRaw("ROLLBACK TO SAVEPOINT \(savepoint)"))
                    _ = try await execute(.unsafeRaw("RELEASE SAVEPOINT \(savepoint)"))
                    transactionDepth.withLock { $0 -= 1 }
                } else {
                    _ = try await execute("ROLLBACK")
                    await endTransaction()
                }
            } catch let error as SQLError where driver.rolledBackItself(error) {
                // An interrupted statement (a cancellation) makes SQLite roll the whole transaction back by
                // itself: nothing is left to undo, at any depth.
                await endTransaction()
            }
            return true
        }
        if rolledBack != true { markBroken() }
    }

    private func endTransaction() async {
        transactionDepth.withLock { $0 = 0 }
        let wasReadOnly = readOnlyTransaction.withLock { state -> Bool in defer { state = false }; return state }
        let statements = wasReadOnly ? driver.statementsAfterReadOnlyTransaction() : []
        guard !statements.isEmpty else { return }
        // Shielded: a connection left read-only must not go back to the pool; if this fails, it is discarded.
        let reset: Void? = try? await withCancelScope(
            deadline: cleanUpDeadline(limit: Self.rollbackDeadline), shield: true
        ) { _ in for statement in statements { _ = try await execute(.unsafeRaw(statement)) } }
        if reset == nil { markBroken() }
    }

    /// Whether a transaction is open on this connection, in the database's own word (PostgreSQL's
    /// transaction status, SQLite's autocommit flag, as of the last statement) — raw `BEGIN`s included — or
    /// one opened through this API is in progress.
    public var isInTransaction: Bool {
        transactionDepth.withLock({ $0 > 0 }) || driver.isInTransaction
    }
}

/// A transaction (or savepoint) begun with ``Connection/begin(isolationLevel:readOnly:)``: end it once, with
/// ``commit()`` or ``rollback()``.
public final class Transaction: Sendable {
    private let connection: Connection
    private let savepoint: String?
    private let ended = Atomic<Bool>(false)

    init(connection: Connection, savepoint: String?) {
        self.connection = connection
        self.savepoint = savepoint
    }

    /// Whether this is a savepoint inside an enclosing transaction.
    public var isSavepoint: Bool { savepoint != nil }

    /// Commits (or releases the savepoint). If the commit fails, the transaction is rolled back.
    ///
    /// - Throws: the commit's ``SQLError`` (for example ``SQLError/Kind/serializationFailure``);
    ///   ``SQLError/Kind/misuse`` when the transaction was already ended.
    public func commit() async throws {
        try markEnded()
        do {
            try await connection.commit(savepoint)
        } catch {
            await connection.rollBackShielded(savepoint)
            throw error
        }
    }

    /// Rolls back (to the savepoint), shielded from cancellation and within a deadline; the connection is
    /// marked broken if even that fails.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` when the transaction was already ended.
    public func rollback() async throws {
        try markEnded()
        await connection.rollBackShielded(savepoint)
    }

    private func markEnded() throws(SQLError) {
        guard !ended.exchange(true, ordering: .acquiringAndReleasing) else {
            throw SQLError(.misuse, "the transaction was already committed or rolled back")
        }
    }
}
