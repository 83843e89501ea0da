public import Runtime

/// What a listener yields: a notification, or word that the connection was lost and made again — the
/// notifications sent meanwhile are gone (PostgreSQL delivers them only to sessions listening when they are
/// committed), so whatever state they carry should be read again.
public enum NotificationEvent: Sendable, Hashable {
    case notification(PostgresNotification)
    /// The listening connection was lost and is back, listening again: notifications may have been missed.
    case reconnected
}

extension Engine {
    /// Listens on `channels` for as long as `body` runs, on a connection of its own (not the pool's).
    ///
    /// ```swift
    /// try await engine.listen(to: ["jobs"]) { events in
    ///     for try await event in events {
    ///         switch event {
    ///         case .notification(let note): try await handle(note.payload)
    ///         case .reconnected: try await rescanJobs()   // some may have been missed
    ///         }
    ///     }
    /// }
    /// ```
    ///
    /// - The `LISTEN`s are in effect when `body` starts: a notification committed after that is delivered.
    /// - Back-pressure: at most `bufferSize` events wait in the process; while they do, the listener stops
    ///   reading its socket (the server queues the rest).
    /// - A lost connection is made again (waiting 0.1 s, doubling to 5 s, between attempts), its `LISTEN`s
    ///   issued again, and then ``NotificationEvent/reconnected`` comes before the next notification. The
    ///   engine's pool then checks its idle connections before handing them out (they may be dead too).
    /// - When `body` returns or throws, the listener stops and its connection closes.
    ///
    /// - Throws: ``SQLError/Kind/misuse`` for a SQLite engine or no channel; the first connection's error;
    ///   what `body` throws.
    public func listen<T>(
        to channels: [String], bufferSize: Int = 1024,
        isolation: isolated (any Actor)? = #isolation,
        _ body: (MemoryReceiveChannel<NotificationEvent>) async throws -> T
    ) async throws -> T {
        guard url.database == .postgresql else { throw SQLError(.misuse, "LISTEN/NOTIFY is PostgreSQL's: this engine is SQLite") }
        guard !channels.isEmpty else { throw SQLError(.misuse, "listen(to:) needs at least one channel") }
        if let configurationError { throw configurationError }
        let (send, receive) = try makeMemoryChannel(of: NotificationEvent.self, bufferSize: bufferSize)
        let first = try await listeningConnection(channels)
        var result: T?
        do {
            try await Runtime.withTaskGroup { group in
                try group.startSoon { [self] in
                    defer { send.close() }
                    try await pump(first, channels, into: send)
                }
                result = try await body(receive)
                group.cancel()
            }
        } catch {
            receive.close()
            throw error
        }
        receive.close()
        guard let result else { throw CancellationError() }  // (the group only ends without it when cancelled)
        return result
    }

    /// A new connection with `LISTEN` issued for every channel.
    private func listeningConnection(_ channels: [String]) async throws -> PostgresConnection {
        let connection = try await PostgresConnection.connect(
            url, logger: logger, timeout: poolConfiguration.connectTimeout, grace: poolConfiguration.cancellationGrace,
            password: url.hasPassword ? nil : passwordProvider, preparedStatements: poolConfiguration.preparedStatements)
        do {
            for channel in channels { _ = try await connection.execute("LISTEN " + SQL.identifier(channel).text(placeholders: .dollarNumbered), []) }
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    /// Reads notifications into `channel` until cancelled, making the connection again whenever it is lost.
    private func pump(_ first: PostgresConnection, _ channels: [String], into channel: MemorySendChannel<NotificationEvent>) async throws {
        var connection = first
        do {
            try await pumpForever(&connection, channels, into: channel)
        } catch {
            // Cancelled (the body is done) or failed: the connection closes before the listener returns.
            let last = connection
            _ = try? await withCancelScope(shield: true) { _ in await last.close() }
            throw error
        }
    }

    private func pumpForever(
        _ connection: inout PostgresConnection, _ channels: [String], into channel: MemorySendChannel<NotificationEvent>
    ) async throws {
        while true {
            do {
                for note in try await connection.nextNotifications() { try await channel.send(.notification(note)) }
            } catch let error as SQLError where error.kind == .connection {
                logger.warning("the listening connection was lost; listening again once it is back", metadata: ["error": "\(error.message)"])
                await connection.close()
                // The engine's pooled connections to the same server may be dead too.
                try? serverWentAway()
                var pause = Duration.milliseconds(100)
                while true {
                    do {
                        connection = try await listeningConnection(channels)
                        break
                    } catch let error as SQLError where error.kind == .connection || error.kind == .timeout {
                        try await Runtime.sleep(for: pause)
                        pause = min(pause * 2, .seconds(5))
                    }
                }
                try await channel.send(.reconnected)
            }
        }
    }
}
