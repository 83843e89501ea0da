#if canImport(Glibc)
import Glibc
#endif
import Runtime
@testable import SQLAsync
import TestSupport
import Testing

/// TLS and authentication against a real server that takes TLS connections only and authenticates with
/// SCRAM-SHA-256 or a client certificate (scripts/pg-cluster.sh --tls, with a CA the script makes). On
/// every backend: verify-full connects, a wrong CA, a host-name mismatch, a connection without TLS and a
/// wrong password fail with messages that say so and quote no password; a client certificate, a password
/// file and a password provider authenticate.
///
/// (Suites that start servers of their own are named `Cluster…`: `swift test --skip Cluster` runs the rest.)
@Suite("TLS and authentication", .serialized, .limit(minutes: 3))
struct ClusterTLSTests {
    struct Setup {
        let cluster: ThrowAwayCluster
        let certificates: String
        let password: String
        let port: String

        /// The cluster's URL with `userInfo` in place of `alice@` and `query` appended.
        func url(userInfo: String? = nil, host: String = "localhost", _ query: String) -> String {
            let user = userInfo ?? "alice:\(password)"
            return "postgresql://\(user)@\(host):\(port)/postgres?\(query)"
        }
    }

    /// The cluster, made off the loop (initdb and the certificates take seconds).
    static func setUp() async throws -> Setup {
        let cluster = try await Runtime.runBlocking { try ThrowAwayCluster.sharedTLS() }
        let certificates = try #require(cluster.tlsDirectory)
        let password = try #require(cluster.password)
        let port = try #require(cluster.url.split(separator: ":").last?.split(separator: "/").first.map(String.init))
        return Setup(cluster: cluster, certificates: certificates, password: password, port: port)
    }

    /// Connects once with `url` (and `password`), returning what `query` gives or the error.
    static func attempt(_ url: String, password: Engine.PasswordProvider? = nil, _ query: SQL = "SELECT current_user") async -> Result<String, SQLError> {
        var pool = PoolConfiguration()
        pool.size = 1
        pool.overflow = 0
        let engine: Engine
        do {
            engine = try Engine(url, pool: pool, logger: quietLogger, password: password)
        } catch {
            return .failure(error)
        }
        let result: Result<String, SQLError>
        do {
            result = .success(try await engine.withConnection { try await $0.execute(query).scalar(String.self) } ?? "")
        } catch let error as SQLError {
            result = .failure(error)
        } catch {
            result = .failure(SQLError(.misuse, "unexpected \(error)"))
        }
        await engine.dispose()
        return result
    }

    @Test("verify-full with the right CA connects over TLS; a wrong CA, a host-name mismatch, no TLS and a wrong password say so",
          arguments: TestBackend.selected)
    func verification(_ backend: TestBackend) async throws {
        try await backend.run {
            let setup = try await Self.setUp()
            let ca = "sslmode=verify-full&sslrootcert=\(setup.certificates)/ca.crt"
            let tls = await Self.attempt(setup.url(ca), "SELECT current_user || ' ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            #expect(try tls.get().hasPrefix("alice TLSv1."), "\(tls)")

            func expectFailure(_ url: String, saying phrase: String, password: Engine.PasswordProvider? = nil) async {
                switch await Self.attempt(url, password: password) {
                case .success(let value): Issue.record("\(url) connected (\(value))")
                case .failure(let error):
                    #expect(error.kind == .connection && error.message.contains(phrase), "\(error)")
                    #expect(!DatabaseURL.quotesPart(of: setup.password, in: "\(error)"), "the password shows in \(error)")
                }
            }
            await expectFailure(setup.url("sslmode=verify-full&sslrootcert=\(setup.certificates)/other-ca.crt"), saying: "certificate verify failed")
            await expectFailure(setup.url(host: "127.0.0.1", ca), saying: "does not match host name")
            await expectFailure(setup.url("sslmode=disable"), saying: "no encryption")
            await expectFailure(setup.url(userInfo: "alice:not-the-password", ca), saying: "password authentication failed")
            #expect(try Runtime.current.defaultBlockingLimiter.borrowedTokens == 0)
        }
    }

    @Test("a client certificate authenticates; a password file and a password provider supply the password",
          arguments: TestBackend.selected)
    func credentials(_ backend: TestBackend) async throws {
        try await backend.run {
            let setup = try await Self.setUp()
            let ca = "sslmode=verify-full&sslrootcert=\(setup.certificates)/ca.crt"
            let certificate = "\(ca)&sslcert=\(setup.certificates)/client.crt&sslkey=\(setup.certificates)/client.key"
            #expect(try await Self.attempt(setup.url(userInfo: "certuser", certificate)).get() == "certuser")

            // A password file (libpq's own format and checks: the file must not be readable by others).
            let file = "/tmp/anyruntime-pgpass-\(UInt32.random(in: 0...UInt32.max))"
            defer { unlink(file) }
            let line = "localhost:\(setup.port):*:alice:\(setup.password)\n"
            let fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
            try #require(fd >= 0)
            _ = line.utf8CString.withUnsafeBytes { write(fd, $0.baseAddress, $0.count - 1) }
            close(fd)
            #expect(try await Self.attempt(setup.url(userInfo: "alice", "\(ca)&passfile=\(file)")).get() == "alice")

            // A provider, asked once per new connection.
            let calls = Recorder<Int>()
            let password = setup.password
            let provided = await Self.attempt(setup.url(userInfo: "alice", ca), password: {
                calls.append(1)
                return password
            })
            #expect(try provided.get() == "alice")
            #expect(calls.values.count == 1)
            // Its failure is typed and names the error's type, not its text (which may quote a secret).
            struct VaultUnavailable: Error, CustomStringConvertible { var description: String { "token s3cr3t-QX expired" } }
            let failed = await Self.attempt(setup.url(userInfo: "alice", ca), password: { throw VaultUnavailable() })
            if case .failure(let error) = failed {
                #expect(error.kind == .connection && "\(error)".contains("VaultUnavailable") && !"\(error)".contains("s3cr3t"), "\(error)")
            } else {
                Issue.record("connected without a password")
            }
            // A password in the URL wins over the provider.
            #expect(try await Self.attempt(setup.url(ca), password: { "wrong" }).get() == "alice")
        }
    }
}
