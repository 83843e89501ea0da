// A TLS proxy in front of a PostgreSQL server that sends the server's answers in full 16 KiB TLS records
// (scripts/tls-record-proxy.sh), as some servers and poolers do: the end of an answer then often stays
// decrypted inside OpenSSL while the socket shows nothing to read.

/// The proxy process, one per test that asks (stopped when the test process ends, or by ``stop()``).
public final class TLSRecordProxy: Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The loopback port it listens on.
    public let port: Int
    private let process: ScriptProcess

    /// Starts a proxy to `host:targetPort`. Blocks until it listens (an RSA key is made first).
    public init(host: String = "127.0.0.1", targetPort: Int) throws(Failure) {
        do {
            process = try ScriptProcess(script: "tls-record-proxy.sh", [host, String(targetPort)])
        } catch {
            throw Failure(description: "scripts/tls-record-proxy.sh: \(error)")
        }
        guard let line = process.readLine() else {
            throw Failure(description: "scripts/tls-record-proxy.sh ended before it listened (are python3 and openssl installed?)")
        }
        let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
        guard parts.count == 2, parts[0] == "port", let port = Int(parts[1]) else {
            throw Failure(description: "scripts/tls-record-proxy.sh: \(line)")
        }
        self.port = port
    }

    /// A PostgreSQL URL to this proxy, made from `url` (which points at the target): its host and port
    /// replaced, and TLS required (the proxy's certificate is a throw-away one, so it is not verified).
    public func url(from url: String) throws(Failure) -> String {
        guard let at = url.firstIndex(of: "@"), let slash = url[at...].firstIndex(of: "/") else {
            throw Failure(description: "the URL \(url) has no user@host:port/ part to point at the proxy")
        }
        let rest = String(url[slash...])
        return String(url[..<at]) + "@127.0.0.1:\(port)" + rest + (rest.contains("?") ? "&" : "?") + "sslmode=require"
    }

    /// Stops the proxy. Blocks until it is gone.
    public func stop() { process.finish() }
}
