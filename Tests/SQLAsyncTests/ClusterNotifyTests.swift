import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// LISTEN/NOTIFY on real servers, on every backend: notifications arrive in order through a small buffer
/// (back-pressure), on channels whose names need quoting; across a server restart the listener comes back by
/// itself and says so before the next notification.
@Suite("LISTEN/NOTIFY", .serialized, .limit(minutes: 3))
struct ClusterNotifyTests {
    @Test("200 notifications arrive in order through a buffer of 4, on a channel whose name needs quoting",
          arguments: TestBackend.selected)
    func inOrder(_ backend: TestBackend) async throws {
        let engine = try TestDatabase.postgresql.engine()
        let channel = "we'ird \"chan\" \(UInt32.random(in: 0...UInt32.max))"
        try await backend.run {
            let received = try await engine.listen(to: [channel, "other"], bufferSize: 4) { events in
                var payloads: [String] = []
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        for number in 0..<200 {
                            try await engine.withConnection { try await $0.execute("SELECT pg_notify(\(channel), \(String(number)))") }
                        }
                    }
                    for try await event in events {
                        guard case .notification(let note) = event else { Issue.record("unexpected \(event)"); continue }
                        #expect(note.channel == channel)
                        payloads.append(note.payload)
                        if payloads.count % 50 == 0 { try await Runtime.sleep(for: .milliseconds(20)) }  // a slow consumer
                        if payloads.count == 200 { break }
                    }
                }
                return payloads
            }
            #expect(received == (0..<200).map(String.init))
            await engine.dispose()
        }
    }

    @Test("across a server restart: the listener comes back by itself, and says so before the next notification",
          arguments: TestBackend.selected)
    func acrossRestart(_ backend: TestBackend) async throws {
        try await backend.run {
            let cluster = try await Runtime.runBlocking { try ThrowAwayCluster.make() }
            let engine = try Engine(cluster.url, logger: quietLogger)
            do {
                let seen = try await engine.listen(to: ["jobs"]) { events in
                    var seen: [NotificationEvent] = []
                    try await engine.withConnection { try await $0.execute("NOTIFY jobs, 'before'") }
                    for try await event in events {
                        seen.append(event)
                        switch event {
                        case .notification(let note) where note.payload == "before":
                            try await Runtime.runBlocking {
                                try cluster.stop(mode: "immediate")
                                try cluster.start()
                            }
                        case .reconnected:
                            // Listening again: what is sent now arrives.
                            try await engine.withConnection { try await $0.execute("NOTIFY jobs, 'after'") }
                        case .notification:
                            return seen
                        }
                    }
                    return seen
                }
                let described = seen.map { event -> String in
                    if case .notification(let note) = event { return note.payload }
                    return "reconnected"
                }
                #expect(described == ["before", "reconnected", "after"])
            } catch {
                await engine.dispose()
                try? await Runtime.runBlocking { cluster.finish() }
                throw error
            }
            await engine.dispose()
            try await Runtime.runBlocking { cluster.finish() }
            try await FaultTests.expectNothingLeft("after a listener")
        }
    }

    @Test("a SQLite engine, or no channel, is a misuse")
    func misuse() async throws {
        let sqlite = try Engine("sqlite::memory:", logger: quietLogger)
        try await TestBackend.uv.run {
            await #expect { try await sqlite.listen(to: ["x"]) { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            let postgres = try TestDatabase.postgresql.engine()
            await #expect { try await postgres.listen(to: []) { _ in } } throws: { ($0 as? SQLError)?.kind == .misuse }
            await postgres.dispose()
            await sqlite.dispose()
        }
    }
}
