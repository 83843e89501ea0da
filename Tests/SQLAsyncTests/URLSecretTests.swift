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
}
