import CLibPQ
import Runtime

// LISTEN/NOTIFY: the notifications a connection receives between its calls, read from its socket while it
// is idle. Only a connection a listener owns waits for them (see Engine.listen(to:bufferSize:_:)).

/// A notification sent with `NOTIFY channel, 'payload'` (or `pg_notify`).
public struct PostgresNotification: Sendable, Hashable {
    /// The channel it was sent on.
    public let channel: String
    /// Its payload ('' when none was given).
    public let payload: String
    /// The server process of the session that sent it.
    public let processID: Int32
}

extension PostgresConnection {
    /// The next notifications this idle connection receives (at least one), waiting for them on its socket.
    ///
    /// - Throws: ``SQLError/Kind/connection`` when the connection is lost (or was given up);
    ///   `CancellationError` (nothing is lost: what arrives meanwhile is kept for the next call).
    func nextNotifications() async throws -> [PostgresNotification] {
        while true {
            let ready = handle.notifications()
            if !ready.isEmpty { return ready }
            // (Only its listener uses the connection: no call can hold it here.)
            if let broken = machine.withLock({ $0.brokenReason }) {
                throw SQLError(.connection, "the listening connection is broken (\(broken))")
            }
            let fd = handle.socket
            guard handle.status == CONNECTION_OK, fd >= 0 else { throw await failure(sql: "LISTEN") }
            // Recorded before the wait, so that close() forgets the registration before PQfinish closes the
            // socket (as for every wait of this connection).
            watchedSocket.store(fd, ordering: .releasing)
            _ = try await waitForSocket(fd, for: .read)
            guard handle.consumeInput(), handle.status == CONNECTION_OK else { throw await failure(sql: "LISTEN") }
        }
    }
}
