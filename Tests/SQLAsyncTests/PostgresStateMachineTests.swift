import Runtime
@testable import SQLAsync
import Testing

func proceeds(_ action: PostgresStateMachine.StartAction) -> Bool {
    if case .proceed = action { true } else { false }
}

func reads(_ action: StreamLifecycle.ReadAction) -> Bool {
    if case .read = action { true } else { false }
}

/// The PostgreSQL connection's decisions, without a server: events in, actions out.
@Suite("PostgreSQL connection state machine")
struct PostgresStateMachineTests {
    typealias Machine = PostgresStateMachine
    let now = RuntimeInstant(nanoseconds: 1_000_000_000)
    let grace: Duration = .seconds(5)
    var deadline: RuntimeInstant { now.advanced(by: grace) }

    func idleMachine() -> Machine {
        var machine = Machine()
        machine.connected()
        return machine
    }

    @Test("one call at a time; the server's transaction state is recorded as each call ends")
    func oneCallAtATime() {
        var machine = Machine()
        guard case .fail(let early) = machine.startCall(.statement, sql: "SELECT 1") else {
            Issue.record("a call ran before the connection was made")
            return
        }
        #expect(early.kind == .connection)
        machine.connected()
        #expect(machine.isReusable)
        #expect(proceeds(machine.startCall(.statement, sql: "BEGIN")))
        guard case .fail(let second) = machine.startCall(.statement, sql: "SELECT 2") else {
            Issue.record("a second call was let in")
            return
        }
        #expect(second.kind == .misuse)
        #expect(!machine.isReusable)
        #expect(machine.transaction == .unknown)
        machine.sent()
        #expect(machine.endCall(transaction: .inTransaction) == .none)
        #expect(machine.transaction == .inTransaction)
        #expect(!machine.isReusable, "a session inside a transaction goes back to no pool")
        #expect(proceeds(machine.startCall(.statement, sql: "COMMIT")))
        #expect(machine.endCall(transaction: .idle) == .none)
        #expect(machine.isReusable)
    }

    @Test("a statement on its way: the first cancellation asks the server, later ones keep the same deadline")
    func lateCancellation() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.statement, sql: "INSERT")))
        // Still being pushed out: wait, and ask the server only once it is out.
        #expect(machine.cancellationArrived(now: now, grace: grace) == .wait(deadline: deadline))
        machine.sent()
        let later = now.advanced(by: .seconds(1))
        #expect(machine.cancellationArrived(now: later, grace: grace) == .requestCancelAndWait(deadline: deadline))
        #expect(machine.cancellationArrived(now: later, grace: grace) == .wait(deadline: deadline))
        #expect(machine.state == .busy({
            var call = Machine.Call(kind: .statement)
            call.phase = .cancelling
            call.cancelDeadline = deadline
            call.cancelRequested = true
            return call
        }()))
        // The server cancelled it: nothing happened.
        #expect(machine.resultsRead(failed: true) == .reportCancellation)
        // It finished anyway: its result is reported.
        #expect(machine.resultsRead(failed: false) == .report)
        #expect(machine.endCall(transaction: .idle) == .none)
        #expect(machine.isReusable)
        // The next call starts afresh.
        #expect(proceeds(machine.startCall(.statement, sql: "SELECT 1")))
        #expect(machine.cancelDeadline == nil)
        #expect(machine.resultsRead(failed: true) == .report, "an error without a cancellation is the error")
    }

    @Test("a batch not fully sent stops and closes the connection; once synced it is awaited like a statement")
    func pipelines() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.pipeline, sql: "INSERT")))
        #expect(machine.cancellationArrived(now: now, grace: grace) == .stop(closeConnection: true))
        #expect(machine.isBroken)
        #expect(machine.cleanUpStarted(now: now, grace: grace) == nil, "nothing to clean on a closed batch")
        #expect(machine.endCall(transaction: .unknown) == .none)
        #expect(machine.state == .broken(reason: "a batch was cancelled before it was fully sent"))
        guard case .fail(let error) = machine.startCall(.statement, sql: "SELECT 1") else {
            Issue.record("a broken connection took a call")
            return
        }
        #expect(error.kind == .connection)
        #expect(error.message.contains("a batch was cancelled before it was fully sent"))

        var synced = idleMachine()
        #expect(proceeds(synced.startCall(.pipeline, sql: "INSERT")))
        synced.sent()
        #expect(synced.cancellationArrived(now: now, grace: grace) == .requestCancelAndWait(deadline: deadline))
        #expect(!synced.isBroken)
    }

    @Test("a stream is cleaned up and cut short; a clean-up asks the server to cancel once")
    func streams() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.stream, sql: "SELECT")))
        machine.sent()
        #expect(machine.state == .busy({
            var call = Machine.Call(kind: .stream)
            call.phase = .streaming
            return call
        }()))
        #expect(machine.cancellationArrived(now: now, grace: grace) == .cleanUpAndStop(deadline: deadline))
        // The clean-up keeps the earlier deadline.
        #expect(machine.cleanUpStarted(now: now.advanced(by: .seconds(2)), grace: grace) == deadline)
        let first = machine.shouldRequestCancel()
        let second = machine.shouldRequestCancel()
        #expect(first && !second, "a clean-up asks the server once")
        machine.cleanedUp()
        #expect(machine.endCall(transaction: .idle) == .none)
        #expect(machine.isReusable)
    }

    @Test("no answer within the grace while the statement is still being sent: cancelled, not in doubt")
    func gracePassedWhileSending() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.statement, sql: "INSERT INTO t VALUES ($1)")))
        #expect(machine.cancellationArrived(now: now, grace: grace) == .wait(deadline: now.advanced(by: grace)))
        // The server stopped reading: the sync that ends the statement never left, so closing undoes it.
        #expect(machine.cancelDeadlinePassed(grace) == .cancelled)
        #expect(machine.isBroken)
    }

    @Test("no answer by the deadline gives the connection up")
    func deadlinePassed() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.statement, sql: "SELECT pg_sleep(60)")))
        machine.sent()
        _ = machine.cancellationArrived(now: now, grace: grace)
        #expect(machine.cancelDeadlinePassed(grace) == .inDoubt)
        #expect(machine.isBroken)
        #expect(machine.brokenReason?.contains("no answer within") == true)
        #expect(machine.endCall(transaction: .unknown) == .none)
        #expect(!machine.isReusable)
        #expect(machine.close() == .closeNow)
        #expect(machine.state == .closed)
        #expect(machine.close() == .none, "closing twice closes once")
    }

    @Test("a close that meets a call is handed to it; the first failure's reason is kept")
    func closeDuringCall() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.statement, sql: "SELECT")))
        machine.connectionFailed("the server went away")
        machine.connectionFailed("reading failed")
        #expect(machine.close() == .none)
        #expect(machine.brokenReason == "the server went away")
        #expect(machine.endCall(transaction: .unknown) == .close)
        #expect(machine.state == .closed)
        guard case .fail(let error) = machine.startCall(.statement, sql: "SELECT") else {
            Issue.record("a closed connection took a call")
            return
        }
        #expect(error.message.contains("closed"))

        var idle = idleMachine()
        #expect(idle.close() == .closeNow)
        #expect(idle.isBroken)
    }

    @Test("a failed transaction is told apart, so that COMMIT is not mistaken for one that commits")
    func failedTransaction() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.statement, sql: "SELECT 1/0")))
        #expect(machine.endCall(transaction: .failed) == .none)
        #expect(machine.transaction == .failed)
        #expect(!machine.isReusable)
        machine.connectionFailed("lost")
        #expect(machine.state == .broken(reason: "lost"))
    }
}

@Suite("Stream lifecycle")
struct StreamLifecycleTests {
    @Test("one read at a time; a close that meets a read is handed to it; a stream cut short never looks finished")
    func lifecycle() {
        var stream = StreamLifecycle()
        #expect(reads(stream.startRead(sql: "SELECT")))
        guard case .fail(let concurrent) = stream.startRead(sql: "SELECT") else {
            Issue.record("two reads at once")
            return
        }
        #expect(concurrent.kind == .misuse)
        let closedAtOnce = stream.close()
        #expect(!closedAtOnce, "the running read closes the stream")
        let closedByRead = stream.endRead(failure: nil)
        #expect(closedByRead)
        #expect(stream.state == .closed)
        guard case .fail(let late) = stream.startRead(sql: "SELECT") else {
            Issue.record("a closed stream was read")
            return
        }
        #expect(late.kind == .misuse)
        let closedAgain = stream.close()
        #expect(!closedAgain)

        var cut = StreamLifecycle()
        #expect(reads(cut.startRead(sql: "SELECT")))
        let closeAfterCut = cut.endRead(failure: "a read was cancelled")
        #expect(!closeAfterCut)
        guard case .fail(let error) = cut.startRead(sql: "SELECT") else {
            Issue.record("a stream cut short was read on")
            return
        }
        #expect(error.kind == .cancelled)
        #expect(error.message.contains("a read was cancelled"))
        let closesCut = cut.close()
        #expect(closesCut)
    }

}

extension PostgresStateMachineTests {
    @Test("COPY FROM STDIN: cancelled before the end of its data, it is aborted (nothing copied); after, it is a statement on its way")
    func copyIn() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.copyIn, sql: "COPY t FROM STDIN")))
        machine.sent()
        machine.copyStarted()
        let abort = machine.cancellationArrived(now: now, grace: grace)
        #expect(abort == .abortCopy(deadline: deadline))
        // Given up during the abort: closing the connection undoes the COPY, so it was cancelled, not in doubt.
        let givenUp = machine.cancelDeadlinePassed(grace)
        #expect(givenUp == .cancelled)

        machine = idleMachine()
        #expect(proceeds(machine.startCall(.copyIn, sql: "COPY t FROM STDIN")))
        machine.sent()
        machine.copyStarted()
        machine.copyDataEnded()
        let whileSending = machine.cancellationArrived(now: now, grace: grace)
        #expect(whileSending == .wait(deadline: deadline), "the end is still being pushed out")
        machine.sent()
        let afterSending = machine.cancellationArrived(now: now, grace: grace)
        #expect(afterSending == .requestCancelAndWait(deadline: deadline))
        #expect(machine.resultsRead(failed: true) == .reportCancellation)
        let givenUpAfter = machine.cancelDeadlinePassed(grace)
        #expect(givenUpAfter == .inDoubt, "the whole COPY was sent: it may have committed")
    }

    @Test("COPY TO STDOUT: a cancellation during the data asks the server to cancel, once")
    func copyOut() {
        var machine = idleMachine()
        #expect(proceeds(machine.startCall(.copyOut, sql: "COPY t TO STDOUT")))
        machine.sent()
        machine.copyStarted()
        let first = machine.cancellationArrived(now: now, grace: grace)
        #expect(first == .requestCancelAndWait(deadline: deadline))
        let second = machine.cancellationArrived(now: now, grace: grace)
        #expect(second == .wait(deadline: deadline))
        let again = machine.shouldRequestCancel()
        #expect(!again)
        machine.cleanedUp()
        #expect(machine.endCall(transaction: .idle) == .none)
        #expect(machine.isReusable)
    }
}
