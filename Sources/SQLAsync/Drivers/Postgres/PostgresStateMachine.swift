import Runtime

/// The life of one PostgreSQL connection as a pure value: events in, actions out. ``PostgresConnection`` feeds
/// it what happens (a call starts, its statement is sent, a cancellation lands, the results are read, the
/// server goes away, a close is asked for) and does what it answers; it owns no socket and does no IO, so every
/// transition is tested without a server.
///
/// It decides three things:
/// - who may touch libpq: one call at a time, never after the connection was given up or closed, and a close
///   that meets a running call is handed over to it, so `PQfinish` never runs under a call;
/// - what a cancellation does once a call has begun: a batch still being sent stops (closing the connection,
///   which rolls it back); a statement on its way is not abandoned: the first cancellation asks the server to
///   cancel it and the call keeps reading, shielded, until a deadline; a stream is cleaned up and cut short;
/// - what the call reports afterwards: a statement that failed after a cancellation reports the cancellation
///   (nothing happened); one that finished reports its result.
struct PostgresStateMachine: Sendable, Equatable {
    /// What a call does with the connection.
    enum Kind: Sendable, Equatable {
        /// One statement (prepared, or sent as it is), its whole result read.
        case statement
        /// Several statements through the simple query protocol.
        case script
        /// One statement whose rows are read as they are asked for, until the stream is closed.
        case stream
        /// A batch in pipeline mode: every execution sent, then one sync.
        case pipeline
        /// COPY FROM STDIN: the statement, then data to the server, then the end of the data.
        case copyIn
        /// COPY TO STDOUT: the statement, then data from the server.
        case copyOut
    }

    /// Where a call is.
    enum Phase: Sendable, Equatable {
        /// Its messages are queued and pushed out; a batch may not be complete yet.
        case sending
        /// Everything is sent (a batch: its sync too); the server's answers are read.
        case awaitingResults
        /// A stream's statement is sent; rows are read as they are asked for.
        case streaming
        /// A cancellation landed once the statement was on its way: the server is (or is to be) asked to
        /// cancel it, and reading goes on, shielded, until the deadline.
        case cancelling
        /// A clean-up reads what is left of the results before the connection may be used again.
        case draining
        /// A COPY's data flows (to the server for COPY FROM STDIN, from it for COPY TO STDOUT).
        case copyingData
    }

    /// The server's transaction state after a call (libpq's `PQtransactionStatus`).
    enum TransactionState: Sendable, Equatable {
        case idle
        case inTransaction
        /// A statement failed inside the transaction: a COMMIT would roll it back.
        case failed
        /// A call is still active, or libpq cannot tell (the connection is bad).
        case unknown
    }

    /// A call holding the connection.
    struct Call: Sendable, Equatable {
        var kind: Kind
        var phase: Phase = .sending
        /// A batch's sync was sent: from then on the batch is complete on the server's side.
        var synced = false
        /// The shielded reading's deadline, set by the first cancellation once the statement was on its way.
        var cancelDeadline: RuntimeInstant?
        /// Whether the server was asked to cancel the statement.
        var cancelRequested = false
        /// The deadline of a clean-up without a cancellation (a stream left early), kept for the wait for its
        /// cancel request.
        var cleanUpDeadline: RuntimeInstant?
        /// Why the connection was given up during this call: it is closed, not reused, when the call ends.
        var brokenReason: String?
        /// A close came while the call ran: the call closes the connection when it ends.
        var closeWhenDone = false
        /// COPY FROM STDIN: the end of the data is queued, so the COPY may complete (and commit); until
        /// then, failing or closing undoes all of it.
        var copyEnded = false

        init(kind: Kind) { self.kind = kind }
    }

    enum State: Sendable, Equatable {
        case connecting
        /// Nobody uses the connection; the server's transaction state as the last call left it.
        case idle(TransactionState)
        case busy(Call)
        /// Given up (the server went away, or a clean-up failed): every call fails with the reason. Still to
        /// be closed.
        case broken(reason: String)
        case closed
    }

    private(set) var state: State = .connecting

    init() {}

    // MARK: Connecting

    /// libpq finished connecting.
    mutating func connected() {
        if case .connecting = state { state = .idle(.idle) }
    }

    // MARK: Calls

    enum StartAction: Sendable {
        /// The call holds the connection now.
        case proceed
        /// The call must not run: misuse (another call holds it), or the connection is broken or closed.
        case fail(SQLError)
    }

    /// A call wants the connection. (Cancellation is checked before this, by the caller: nothing is sent
    /// from cancelled code.)
    mutating func startCall(_ kind: Kind, sql: String) -> StartAction {
        switch state {
        case .idle:
            state = .busy(Call(kind: kind))
            return .proceed
        case .busy(let call):
            if let reason = call.brokenReason {
                return .fail(SQLError(.connection, "the connection is broken (\(reason)); discard it", sql: sql))
            }
            return .fail(SQLError(.misuse, "a PostgreSQL connection serves one task at a time", sql: sql))
        case .broken(let reason):
            return .fail(SQLError(.connection, "the connection is broken (\(reason)); discard it", sql: sql))
        case .connecting, .closed:
            return .fail(SQLError(.connection, "the connection is closed", sql: sql))
        }
    }

    /// The server answered a COPY statement: its data flows now.
    mutating func copyStarted() {
        modifyCall { call in
            guard call.kind == .copyIn || call.kind == .copyOut, call.phase == .awaitingResults else { return }
            call.phase = .copyingData
        }
    }

    /// COPY FROM STDIN: all the data is queued, and its end; what is left is pushed out (``sent()`` follows).
    mutating func copyDataEnded() {
        modifyCall { call in
            guard call.kind == .copyIn, call.phase == .copyingData else { return }
            call.copyEnded = true
            call.phase = .sending
        }
    }

    /// The call's messages are all sent (a batch: up to its sync); its answers are read now.
    mutating func sent() {
        modifyCall { call in
            guard call.phase == .sending else { return }
            if call.kind == .pipeline { call.synced = true }
            call.phase = call.kind == .stream ? .streaming : .awaitingResults
        }
    }

    enum CancelAction: Sendable, Equatable {
        /// Stop now and throw `CancellationError`: nothing complete reached the server, or what did is
        /// undone by closing the connection (``closeConnection``).
        case stop(closeConnection: Bool)
        /// Clean up (cancel what runs on the server and drain, within `deadline`), then throw
        /// `CancellationError`: the call's effect is nothing the caller is owed (a stream's rows).
        case cleanUpAndStop(deadline: RuntimeInstant)
        /// Ask the server to cancel the statement, then keep reading, shielded, until `deadline`.
        case requestCancelAndWait(deadline: RuntimeInstant)
        /// Keep reading, shielded, until `deadline`.
        case wait(deadline: RuntimeInstant)
        /// COPY FROM STDIN before the end of its data: end it with a failure (the server then undoes all of
        /// it), read the server's answer, shielded, until `deadline`, and throw `CancellationError`.
        case abortCopy(deadline: RuntimeInstant)
    }

    /// A cancellation reached a wait of the running call at `now`; the caller waits at most `grace` more.
    mutating func cancellationArrived(now: RuntimeInstant, grace: Duration) -> CancelAction {
        guard case .busy(var call) = state else { return .stop(closeConnection: false) }
        defer { state = .busy(call) }
        let deadline = call.cancelDeadline ?? now.advanced(by: grace)
        switch (call.kind, call.phase) {
        case (.pipeline, .sending) where !call.synced:
            // A sync now would commit the part already run; closing makes the server roll it back.
            call.brokenReason = call.brokenReason ?? "a batch was cancelled before it was fully sent"
            return .stop(closeConnection: true)
        case (.copyIn, .copyingData):
            call.cancelDeadline = deadline
            call.phase = .cancelling
            return .abortCopy(deadline: deadline)
        case (.stream, _):
            call.cancelDeadline = deadline
            call.phase = .cancelling
            return .cleanUpAndStop(deadline: deadline)
        case (_, .sending):
            // The statement is queued whole in libpq and being pushed out: the server reads a cancel request
            // only between messages, so it is asked once the statement is out.
            call.cancelDeadline = deadline
            return .wait(deadline: deadline)
        case (_, .awaitingResults), (_, .streaming), (_, .cancelling), (_, .copyingData):
            call.cancelDeadline = deadline
            call.phase = .cancelling
            if call.cancelRequested { return .wait(deadline: deadline) }
            call.cancelRequested = true
            return .requestCancelAndWait(deadline: deadline)
        case (_, .draining):
            call.cancelDeadline = deadline
            return .wait(deadline: deadline)
        }
    }

    enum GiveUpOutcome: Sendable, Equatable {
        /// Throw `CancellationError`: the statement never reached the server whole (its last message, the
        /// sync that ends it, was not sent), and closing the connection rolls back whatever part ran.
        case cancelled
        /// The statement was sent whole and may have run, and committed, or not: throw
        /// ``SQLError/Kind/statementInDoubt``.
        case inDoubt
    }

    /// The shielded reading after a cancellation found no answer within `grace`: the connection is given up
    /// (closed, out of the caller's way), and what the call reports depends on whether the statement was sent.
    mutating func cancelDeadlinePassed(_ grace: Duration) -> GiveUpOutcome {
        let sentWhole: Bool
        if case .busy(let call) = state {
            // A COPY FROM STDIN is complete only with the end of its data: before, closing undoes it.
            sentWhole = call.phase != .sending && (call.kind != .copyIn || call.copyEnded)
        } else {
            sentWhole = true
        }
        connectionFailed("no answer within \(grace) of a cancellation")
        return sentWhole ? .inDoubt : .cancelled
    }

    enum OutcomeAction: Sendable, Equatable {
        /// Return the result, or throw the statement's error.
        case report
        /// Throw `CancellationError`: a cancellation landed and the statement did not complete (the server
        /// cancelled it, or it failed), so nothing happened.
        case reportCancellation
    }

    /// The call read all its results; `failed`: the statement did not complete.
    func resultsRead(failed: Bool) -> OutcomeAction {
        guard failed, case .busy(let call) = state, call.cancelDeadline != nil else { return .report }
        return .reportCancellation
    }

    /// Whether the running call met a cancellation after it began (its clean-up deadline is then set).
    var cancelDeadline: RuntimeInstant? {
        if case .busy(let call) = state { return call.cancelDeadline }
        return nil
    }

    /// Until when the running call may wait for its cancel request to be handled: the deadline its
    /// cancellation or clean-up already had (one budget for both); nil when it had neither.
    var settleDeadline: RuntimeInstant? {
        if case .busy(let call) = state { return call.cancelDeadline ?? call.cleanUpDeadline }
        return nil
    }

    /// A clean-up starts: it reads what is left of the results, shielded, before the connection is used
    /// again. Returns its deadline, or nil when there is nothing to clean (the connection was given up).
    mutating func cleanUpStarted(now: RuntimeInstant, grace: Duration) -> RuntimeInstant? {
        guard case .busy(var call) = state, call.brokenReason == nil else { return nil }
        let deadline = call.cancelDeadline.map { min($0, now.advanced(by: grace)) } ?? now.advanced(by: grace)
        call.phase = .draining
        call.cleanUpDeadline = deadline
        state = .busy(call)
        return deadline
    }

    /// A clean-up asks the server to cancel: once per call.
    mutating func shouldRequestCancel() -> Bool {
        guard case .busy(var call) = state, !call.cancelRequested else { return false }
        call.cancelRequested = true
        state = .busy(call)
        return true
    }

    /// The clean-up left the connection idle: the statement is over on the server.
    mutating func cleanedUp() {
        modifyCall { call in call.phase = .awaitingResults }
    }

    /// The connection cannot be used any more: the server went away, a clean-up failed, or a protocol state
    /// has no way back. The first reason is kept for the errors of later calls.
    mutating func connectionFailed(_ reason: String) {
        switch state {
        case .busy(var call):
            if call.brokenReason == nil { call.brokenReason = reason }
            state = .busy(call)
        case .idle, .connecting:
            state = .broken(reason: reason)
        case .broken, .closed:
            break
        }
    }

    enum EndAction: Sendable, Equatable {
        case none
        /// Close the connection now: a close came during the call.
        case close
    }

    /// The call ends; `transaction` is the server's state as libpq reports it now.
    mutating func endCall(transaction: TransactionState) -> EndAction {
        guard case .busy(let call) = state else { return .none }
        if call.closeWhenDone {
            state = .closed
            return .close
        }
        if let reason = call.brokenReason {
            state = .broken(reason: reason)
        } else {
            state = .idle(transaction)
        }
        return .none
    }

    enum CloseAction: Sendable, Equatable {
        /// Close the connection now.
        case closeNow
        /// Nothing to do: closed already, or the running call closes it when it ends.
        case none
    }

    /// Someone closes the connection.
    mutating func close() -> CloseAction {
        switch state {
        case .connecting, .idle, .broken:
            state = .closed
            return .closeNow
        case .busy(var call):
            call.closeWhenDone = true
            if call.brokenReason == nil { call.brokenReason = "closed while a call was running" }
            state = .busy(call)
            return .none
        case .closed:
            return .none
        }
    }

    // MARK: Questions

    /// Whether the connection was given up or closed (a call that met a failure counts at once).
    var isBroken: Bool {
        switch state {
        case .broken, .closed: true
        case .busy(let call): call.brokenReason != nil
        case .connecting, .idle: false
        }
    }

    /// Why the connection was given up, if it was.
    var brokenReason: String? {
        switch state {
        case .broken(let reason): reason
        case .busy(let call): call.brokenReason
        case .closed: "closed"
        case .connecting, .idle: nil
        }
    }

    /// The server's transaction state as the last call left it (`unknown` while a call runs).
    var transaction: TransactionState {
        if case .idle(let transaction) = state { return transaction }
        return .unknown
    }

    /// Whether the connection may go back to a pool: no call holds it, not given up, and the session idle
    /// outside any transaction.
    var isReusable: Bool { state == .idle(.idle) }

    private mutating func modifyCall(_ body: (inout Call) -> Void) {
        guard case .busy(var call) = state else { return }
        body(&call)
        state = .busy(call)
    }
}
