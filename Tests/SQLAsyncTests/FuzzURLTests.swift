@testable import SQLAsync
import Testing

/// Random URLs, well-formed and not, with random passwords put in every place a password can go and
/// encoded every way (raw, %-encoded, half of each): parsing never crashes, and no piece of the password
/// appears in the URL's description or in the error that refuses it.
@Suite("Fuzzing: DatabaseURL")
struct FuzzURLTests {
    static let passwordPieces: [String] =
        "ABCDEFGHJKMNPQRSTUVWXYZ0123456789".map(String.init) + [
            "?", "@", "/", "#", "%", ":", "[", "]", "&", "=", ";", ",", "\\", " ", "'", "\"", "+", "é", "€", "👋", "%2", "%41",
            "%zz", "%40", "%3F", "%2F", "!", "$", "*", "(", ")", "~", "^", "|", "{", "}", "<", ">", "\t", "q", "z",
        ]
    static let schemes = ["postgresql://", "postgres://", "postgresql:", "postgresql:///", "sqlite://", "mysql://", "POSTGRESQL://", ""]
    static let users = ["alice", "", "b%40b", "u-s.e_r", "%zz", "alice:"]
    static let hosts = [
        "localhost", "127.0.0.1:5432", "[::1]:5433", "db1,db2:6000", "", "%2Ftmp", "h:99999", "h:abc", "[::1", "db1:1,db2:2,db3:3",
        "host.example.com:0", ":5432",
    ]
    static let paths = ["", "/app", "/", "/a%2Fb", "/db?", "/x/y", "/%"]
    static let parameters = [
        "sslmode=disable", "application_name=x%20y", "connect_timeout=3", "no_such=1", "client_encoding=LATIN1", "options=-c%20x%3Dy",
        "host=other", "port=5", "target_session_attrs=read-write", "=", "&", "sslmode", "connect_timeout=-1",
    ]

    /// How the password is written into the URL.
    enum Placement: CaseIterable { case userInfo, userInfoEncoded, userInfoHalfEncoded, queryParameter, queryParameterEncoded }

    /// `text` with the bytes `encoded` picks %-encoded (letters and digits always stay).
    static func encode(_ text: String, _ encoded: (Int) -> Bool) -> String {
        var out = ""
        for (index, byte) in text.utf8.enumerated() {
            let unreserved = (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
            if unreserved || !encoded(index) {
                out += String(decoding: [byte], as: UTF8.self)
            } else {
                let hex = Array("0123456789ABCDEF")
                out += "%\(hex[Int(byte >> 4)])\(hex[Int(byte & 15)])"
            }
        }
        return out
    }

    /// `password` with every ASCII letter and digit replaced by another (the same bytes otherwise): what the
    /// parser says about it shows which pieces of its messages come from the wording, not the password.
    static func shadow(of password: String) -> String {
        String(decoding: password.utf8.map { byte -> UInt8 in
            switch byte {
            case 0x30...0x39: 0x30 + (byte - 0x30 + 5) % 10
            case 0x41...0x5A: 0x41 + (byte - 0x41 + 13) % 26
            case 0x61...0x7A: 0x61 + (byte - 0x61 + 13) % 26
            default: byte
            }
        }, as: UTF8.self)
    }

    /// One random URL: its text, the text with the password left out, and the text with the password's
    /// shadow in its place (the same random choices for all three).
    static func url(password: String, using random: inout some RandomNumberGenerator) -> (text: String, withoutPassword: String, shadow: String) {
        let placement = random.pick(Placement.allCases)
        let mask = password.utf8.map { _ in random.chance(0.5) }
        func written(_ secret: String) -> String {
            switch placement {
            case .userInfo, .queryParameter: secret
            case .userInfoEncoded, .queryParameterEncoded: encode(secret) { _ in true }
            case .userInfoHalfEncoded: encode(secret) { mask[$0] }
            }
        }
        var query = (0..<Int.random(in: 0...3, using: &random)).map { _ in random.pick(parameters) }
        let inUserInfo = placement == .userInfo || placement == .userInfoEncoded || placement == .userInfoHalfEncoded
        if !inUserInfo { query.insert("password=", at: Int.random(in: 0...query.count, using: &random)) }
        let scheme = random.pick(schemes), user = random.pick(users), userAlone = random.chance(0.5)
        let host = random.pick(hosts), path = random.pick(paths), fragment = random.chance(0.1)
        func assemble(_ secret: String) -> String {
            var text = scheme
            if inUserInfo { text += "\(user):\(secret)@" } else if userAlone { text += "\(user)@" }
            text += host + path
            if !query.isEmpty { text += "?" + query.map { $0 == "password=" ? "password=" + secret : $0 }.joined(separator: "&") }
            if fragment { text += "#fragment" }
            return text
        }
        return (assemble(written(password)), assemble(""), assemble(written(shadow(of: password))))
    }

    /// Every four-character piece of `password` (or the whole, when shorter).
    static func pieces(of password: String) -> [String] {
        let characters = Array(password)
        guard characters.count > 4 else { return [password] }
        return (0...(characters.count - 4)).map { String(characters[$0..<$0 + 4]) }
    }

    @Test("no crash and no piece of the password anywhere, for 20,000 random URLs")
    func urls() {
        var random = Fuzz.generator("urls")
        var parsed = 0, refused = 0, tested = 0
        let budget = 20_000 * Fuzz.scale
        while tested < budget {
            let password = (0..<Int.random(in: 1...16, using: &random)).map { _ in random.pick(Self.passwordPieces) }.joined()
            let (text, withoutPassword, shadow) = Self.url(password: password, using: &random)
            // A piece that shows for the shadow too comes from the wording (or the rest of the URL): it proves nothing.
            var background = withoutPassword + "\n" + shadow + "\n"
            do { background += try DatabaseURL(shadow).description } catch { background += error.description }
            let checked = Self.pieces(of: password).filter { !background.contains($0) }
            guard !checked.isEmpty else { continue }
            tested += 1
            let shown: String
            do {
                let url = try DatabaseURL(text)
                parsed += 1
                shown = ([url.description, String(reflecting: url), url.user ?? "", url.databaseName ?? ""] + url.hosts
                    + url.parameters.map { "\($0.key)=\($0.value)" }).joined(separator: "\n")
            } catch {
                refused += 1
                shown = [error.description, String(reflecting: error), error.sql ?? ""].joined(separator: "\n")
            }
            if let piece = checked.first(where: { shown.contains($0) }) {
                Issue.record("'\(piece)' of the password \(password.debugDescription) shown for \(text.debugDescription): \(shown) (\(Fuzz.replay))")
                return
            }
        }
        #expect(parsed > budget / 100 && refused > budget / 100, "parsed \(parsed), refused \(refused): the generator should make both")
    }
}
