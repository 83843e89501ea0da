import Runtime
@testable import SQLAsync
import TestSupport
import Testing

@Suite("DatabaseURL read by libpq", .limit(minutes: 1))
struct DatabaseURLLibpqTests {
    @Test("several hosts, a socket directory, a host given as a parameter, libpq's own keywords")
    func parsing() throws {
        let multi = try DatabaseURL("postgresql://app:pw@db1.example.com:5432,[::1]:5433/app?target_session_attrs=read-write")
        #expect(multi.hosts == ["db1.example.com", "::1"])
        #expect(multi.ports == [5432, 5433])
        #expect(multi.host == "db1.example.com" && multi.port == 5432)
        #expect(multi.databaseName == "app")
        #expect(multi.description == "postgresql://app:***@db1.example.com:5432,[::1]:5433/app?target_session_attrs=read-write")

        let socket = try DatabaseURL("postgresql://%2Fvar%2Frun%2Fpostgresql/app")
        #expect(socket.host == "/var/run/postgresql")
        #expect(socket.databaseName == "app")

        let parameter = try DatabaseURL("postgresql:///app?host=db.example.com&port=6000")
        #expect(parameter.host == "db.example.com" && parameter.port == 6000)

        // A keyword this libpq knows but no list of ours did (read from libpq itself).
        #expect(DatabaseURL.libpqKeywords.contains("sslcrldir"))
        #expect(throws: SQLError.self) { try DatabaseURL("postgresql://localhost/app?no_such_keyword=1") }
        // Ports must match the hosts: one for all, or one per host.
        #expect(throws: SQLError.self) { try DatabaseURL("postgresql:///app?host=a,b,c&port=1,2") }
    }

    @Test("every host is resolved off the loop into hostaddr, the name kept beside each address, the ports expanded")
    func resolution() throws {
        let resolved = try resolvingHosts(
            [("host", "db1,/tmp/sockets,db2"), ("port", "5432,5433,5434"), ("dbname", "app")],
            resolve: { name in name == "db1" ? ["10.0.0.1", "10.0.0.2"] : ["10.0.0.3"] })
        func value(_ key: String) -> String? { resolved.last { $0.key == key }?.value }
        #expect(value("host") == "db1,db1,/tmp/sockets,db2")
        #expect(value("hostaddr") == "10.0.0.1,10.0.0.2,,10.0.0.3")
        #expect(value("port") == "5432,5432,5433,5434")
        #expect(value("dbname") == "app")
        // A hostaddr of the application's own: left alone.
        let given = try resolvingHosts([("host", "db1"), ("hostaddr", "10.9.9.9")], resolve: { _ in ["never"] })
        #expect(given.last { $0.key == "hostaddr" }?.value == "10.9.9.9")
    }

    @Test("a libpq error quoting part of the password is withheld")
    func redaction() throws {
        #expect(DatabaseURL.quotesPart(of: "hunter2", in: "bad token \"nter2x\""))
        #expect(!DatabaseURL.quotesPart(of: "hunter2", in: "bad token \"xyz\""))
        #expect(!DatabaseURL.quotesPart(of: nil, in: "anything"))
    }

    @Test("a multi-host URL whose first host refuses connections reaches the second", arguments: TestBackend.selected)
    func multiHostFailover(_ backend: TestBackend) async throws {
        let server = try postgresURL()
        let port = try #require(server.port)
        let user = server.user ?? "postgres"
        // Port 1 on loopback refuses at once; libpq then tries the next host.
        let url = try DatabaseURL("postgresql://\(user)@127.0.0.1:1,localhost:\(port)/\(server.databaseName ?? "postgres")")
        let engine = Engine(url: url, logger: quietLogger)
        try await backend.run {
            let one = try await engine.withConnection { try await $0.execute("SELECT \(1)").scalar(Int.self) }
            #expect(one == 1)
            await engine.dispose()
        }
    }
}
