@testable import SQLAsync
import Testing

/// No piece of a password, whatever characters it has and however badly the URL encodes them, appears in a
/// URL's description or in the error that refuses it.
@Suite("DatabaseURL secrets")
struct URLSecretTests {
    static let passwords = [
        "pw?x@y", "12?ab@cd", "1234?secret", "ab@cd?ef", "p/ss?w@rd", "se#cret", "p%zzss", "[p4ss]", "a:b@c/d?e=f&g",
        "9999@x", "pa ss", "p\\ss", "p'ss", "p\"ss", "p,ss", "12345", "ab%40cd", "x]y[z", "p=q&r", "@@@@", "????", "a@b", "p@ZZ@QX",
    ]
    static let templates = [
        "postgresql://alice:PW@localhost/app", "postgresql://alice:PW@localhost:5432/app?sslmode=disable",
        "postgresql://alice:PW@[::1]/app", "postgresql://alice:PW@db1,db2/app", "postgres://alice:PW@/app",
        "postgresql://alice:PW@localhost", "postgresql://alice:PW@localhost/app?application_name=x",
        "postgresql://alice:PW@db1:1,db2:2,db3:3/app", "postgres://alice::PW@[::1]:5433/app",
    ]

    @Test("no piece of the password in a description or an error", arguments: templates)
    func noPieces(_ template: String) {
        for password in Self.passwords {
            let text = template.replacingOccurrences(of: "PW", with: password)
            do {
                let url = try DatabaseURL(text)
                #expect(!DatabaseURL.quotesPart(of: password, in: url.description), "\(text) → \(url.description)")
                #expect(url.user == "alice" || url.user == nil || !DatabaseURL.quotesPart(of: password, in: url.user ?? ""), "\(text)")
                // Nor in what libpq would connect to: a host name is looked up, and shown in errors.
                #expect(!url.hosts.contains { DatabaseURL.quotesPart(of: password, in: $0) }, "\(text) → hosts \(url.hosts)")
                #expect(!DatabaseURL.quotesPart(of: password, in: url.databaseName ?? ""), "\(text)")
            } catch {
                #expect(!DatabaseURL.quotesPart(of: password, in: error.description), "\(text) → \(error.description)")
            }
        }
    }

    @Test("libpq's reading and ours agree: an empty password is none, a '?' before the user-info '@' is refused unquoted")
    func agreement() throws {
        let empty = try DatabaseURL("postgresql://alice:@localhost/app")
        #expect(!empty.hasPassword || empty.description == "postgresql://alice:***@localhost/app")
        #expect(try DatabaseURL("postgresql://:@localhost/app").hosts == ["localhost"])
        // libpq would read "h?application_name=me" as the user and connect to x; a password "1234?qzwv=1"
        // would have had 'qzwv' quoted as an unknown parameter.
        for text in ["postgresql://h?application_name=me@x/app", "postgresql://u:1234?qzwv=1@h/db", "postgresql://u:pw?client_encoding=QX7@h"] {
            #expect { try DatabaseURL(text) } throws: {
                let message = "\($0)"
                return message.contains("'?'") && !message.contains("qzwv") && !message.contains("QX7") && !message.contains("me@x")
            }
        }
        // A '?' after the first '/' is the parameters', as before.
        #expect(try DatabaseURL("postgresql://alice@localhost/app?application_name=a@b").parameters.first?.value == "a@b")
    }
}
