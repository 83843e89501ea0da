import SQLAsync
import Testing

@Suite("DatabaseURL")
struct DatabaseURLTests {
    @Test("a full PostgreSQL URL: user, password, host, port, database, percent-decoding, libpq keywords")
    func postgres() throws {
        let url = try DatabaseURL(
            "postgresql://app%40corp:s3cr%3At@db.example.com:6543/my%20db?sslmode=require&application_name=demo")
        #expect(url.database == .postgresql)
        #expect(url.user == "app@corp")
        #expect(url.hasPassword)
        #expect(url.host == "db.example.com")
        #expect(url.port == 6543)
        #expect(url.databaseName == "my db")
        #expect(url.parameters.map(\.key) == ["sslmode", "application_name"])
        #expect(url.parameters.map(\.value) == ["require", "demo"])
    }

    @Test("the password never appears in the description")
    func passwordHidden() throws {
        let url = try DatabaseURL("postgres://alice:hunter2@localhost/app")
        #expect(!url.description.contains("hunter2"))
        #expect(url.description == "postgresql://alice:***@localhost/app")
    }

    @Test(
        "a password with reserved characters left unencoded is refused without a piece of it in the error",
        arguments: [
            "postgresql://alice:pw7x/ss987@localhost/app", "postgresql://alice:pw7x?ss987@localhost/app",
            "postgresql://alice:pw7x&ss987=x@localhost/app", "postgresql://alice:12/ss987@localhost/app",
            // Found by the URL fuzzer: no authority at all, so the password's tail after its '?' reads as a
            // parameter name (or a client_encoding value), which the error named.
            "postgresql:///alice:pw7x?ss987=@localhost", "postgresql:///alice:pw7x?client_encoding=ss987@localhost",
        ])
    func unencodedPassword(_ text: String) throws {
        do {
            let url = try DatabaseURL(text)
            // Parsed somehow: then no piece of the password may show in the description either.
            #expect(!url.description.contains("ss987"), "\(url.description)")
        } catch {
            #expect(error.kind == .invalidURL)
            #expect(!error.description.contains("ss987") && !error.description.contains("pw7x"), "\(error.description)")
        }
    }

    @Test("an sslpassword parameter is hidden like the password")
    func sslPasswordHidden() throws {
        let url = try DatabaseURL("postgresql://alice@localhost/app?sslmode=require&sslpassword=keyphrase")
        #expect(!url.description.contains("keyphrase") && url.description.contains("sslpassword=***"))
    }

    @Test("IPv6 hosts, defaults and minimal URLs")
    func hosts() throws {
        let v6 = try DatabaseURL("postgresql://[::1]:5433/db")
        #expect(v6.host == "::1" && v6.port == 5433)
        let minimal = try DatabaseURL("postgresql://")
        #expect(minimal.host == nil && minimal.port == nil && minimal.user == nil && minimal.databaseName == nil)
    }

    @Test("SQLite URLs: relative, absolute, in memory")
    func sqlite() throws {
        #expect(try DatabaseURL("sqlite:///data/app.db").sqlitePath == "data/app.db")
        #expect(try DatabaseURL("sqlite:////var/lib/app.db").sqlitePath == "/var/lib/app.db")
        #expect(try DatabaseURL("sqlite::memory:").sqlitePath == nil)
        #expect(try DatabaseURL("sqlite::memory:").database == .sqlite)
        #expect(try DatabaseURL("sqlite:////var/lib/app.db").description == "sqlite:////var/lib/app.db")
    }

    @Test(
        "bad URLs are typed errors naming the problem, never the password",
        arguments: [
            ("mysql://u:pw@h/db", "scheme"),
            ("postgresql://u:pw@h:99999/db", "port"),
            ("postgresql://u:pw@h:abc/db", "port"),
            ("postgresql://u:pw@h/db?sslmod=require", "sslmod"),
            ("postgresql://u:pw@h/db?sslmode", "no '='"),
            ("postgresql://u:p%zzw@h/db", "%-escape"),
            ("postgresql://u:pw@[::1/db", "']'"),
            ("postgresql://u@h/db?password=pw", "password"),
            ("sqlite:relative.db", "sqlite:///"),
            ("sqlite:///", "no file"),
        ])
    func badURLs(_ text: String, _ expected: String) {
        do {
            _ = try DatabaseURL(text)
            Issue.record("\(text) was accepted")
        } catch {
            #expect(error.kind == .invalidURL)
            #expect(error.message.contains(expected), "message: \(error.message)")
            #expect(!error.description.contains(":pw@") && !error.description.contains("p%zzw"))
        }
    }
}

@Suite("SQL")
struct SQLTests {
    @Test("interpolations become bound parameters, numbered per dialect")
    func binding() {
        let name = "O'Brien; DROP TABLE users"
        let query: SQL = "SELECT id FROM users WHERE name = \(name) AND age > \(30) AND nick IS \(String?.none)"
        #expect(query.text(placeholders: .dollarNumbered) == "SELECT id FROM users WHERE name = $1 AND age > $2 AND nick IS $3")
        #expect(query.text(placeholders: .questionMark) == "SELECT id FROM users WHERE name = ? AND age > ? AND nick IS ?")
        #expect(query.values == [.text(name), .integer(30), .null])
        #expect(!query.description.contains("O'Brien"))
    }

    @Test("fragments compose; raw text and identifiers only through explicit spellings")
    func composition() {
        let table = SQL.identifier("weird \"name\"")
        let filter: SQL = "WHERE id = \(7)"
        var query: SQL = "SELECT * FROM \(table) \(filter) ORDER BY \(unsafeRaw: "id DESC")"
        query.append(" LIMIT \(10)")
        #expect(query.text(placeholders: .dollarNumbered) == "SELECT * FROM \"weird \"\"name\"\"\" WHERE id = $1 ORDER BY id DESC LIMIT $2")
        #expect(query.values == [.integer(7), .integer(10)])
    }
}

@Suite("DatabaseURL, session settings")
struct DatabaseURLSessionSettingsTests {
    @Test("a client_encoding other than UTF-8 is refused: the driver decodes text as UTF-8")
    func clientEncoding() throws {
        #expect { try DatabaseURL("postgresql://localhost/app?client_encoding=LATIN1") } throws: {
            ($0 as? SQLError)?.kind == .invalidURL && "\($0)".contains("UTF8")
        }
        for spelling in ["UTF8", "utf8", "UTF-8", "unicode"] {
            #expect(throws: Never.self) { try DatabaseURL("postgresql://localhost/app?client_encoding=\(spelling)") }
        }
    }
}
