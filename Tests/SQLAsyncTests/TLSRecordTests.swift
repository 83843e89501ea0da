import Runtime
import SQLAsync
import TestSupport
import Testing

/// Servers and poolers that write 16 KiB TLS records (PostgreSQL 15 writes 8 KiB) can leave the end of an
/// answer decrypted inside OpenSSL, where the socket shows nothing to read; libpq's blocking calls look
/// there first, and so must every wait of the driver. Through `TLSRecordProxy` the end of each answer comes
/// in a full-size record, so answers of many sizes meet that case.
@Suite("TLS records larger than libpq's read room", .limit(minutes: 2))
struct TLSRecordTests {
    static func proxied() throws -> (TLSRecordProxy, String) {
        let server = try postgresURL(direct: true)
        let port = try #require(server.port, "the test server's URL has no port")
        try #require(server.host == "127.0.0.1", "the test server is not on 127.0.0.1: \(server)")
        let proxy = try TLSRecordProxy(targetPort: port)
        return (proxy, try proxy.url(from: try postgresURLString(direct: true)))
    }

    @Test("answers whose end stays inside OpenSSL are read, not waited for: rows, a stream, a COPY TO",
          arguments: TestBackend.selected)
    func fullRecords(_ backend: TestBackend) async throws {
        let (proxy, url) = try Self.proxied()
        defer { proxy.stop() }
        let engine = try Engine(url, pool: .patient, logger: quietLogger)
        try await backend.run {
            try await engine.withConnection { connection in
                // Every answer size from about 16 KiB to 100 KiB, in rows of two widths; each must come back
                // within 10 s (a wait for bytes already read would last until the deadline).
                var hung: [String] = []
                // (Every fourth size under a sanitizer, which slows the whole suite several times over.)
                let step = TestBuild.isSanitized ? 4 : 1
                for (width, counts) in [(100, stride(from: 150, to: 900, by: 7 * step)), (3_000, stride(from: 5, to: 34, by: step))] {
                    for count in counts where hung.isEmpty {
                        do {
                            let rows: Int? = try await withCancelScope(deadline: try Runtime.current.now.advanced(by: .seconds(10))) { _ in
                                try await connection.execute("SELECT repeat('x', CAST(\(width) AS integer)) FROM generate_series(1, \(count))").count
                            }
                            if rows != count { hung.append("\(count) rows of \(width) bytes: \(rows.map(String.init) ?? "no answer in 10 s")") }
                        } catch {
                            hung.append("\(count) rows of \(width) bytes: \(error)")
                        }
                    }
                }
                #expect(hung.isEmpty, "\(hung)")
            }
            try await engine.withConnection { connection in
                // A stream reads row by row (libpq's single-row mode), and a COPY TO chunk by chunk.
                let streamed: Int? = try await withCancelScope(deadline: try Runtime.current.now.advanced(by: .seconds(10))) { _ in
                    try await connection.stream("SELECT repeat('y', 900) FROM generate_series(1, 500)", batchSize: 7) { rows in
                        var count = 0
                        for try await _ in rows { count += 1 }
                        return count
                    }
                }
                #expect(streamed == 500)
                let copied: Int? = try await withCancelScope(deadline: try Runtime.current.now.advanced(by: .seconds(10))) { _ in
                    try await connection.copyOut("COPY (SELECT repeat('z', 700) FROM generate_series(1, 700)) TO STDOUT") { _ in }
                }
                #expect(copied == 700)
            }
            await engine.dispose()
        }
    }
}
