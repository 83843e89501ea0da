// The PostgreSQL server the tests use: the one named by ANYRUNTIME_PG_URL, or a throw-away cluster started
// once per test process by scripts/with-postgres.sh — the same helper the demo and the benchmarks use — and
// stopped when the process ends.
#if canImport(Glibc)
import Glibc
#endif

public enum TestPostgres {
    /// Why no server could be had.
    public struct Unavailable: Error, CustomStringConvertible {
        public let description: String
    }

    /// The server's URL (`postgresql://user@host:port/db`), starting a throw-away server on first use.
    ///
    /// - Throws: ``Unavailable`` saying why — the tests that need the server then fail with that message;
    ///   they never skip.
    public static func url() throws(Unavailable) -> String { try server.get() }

    private static let server: Result<String, Unavailable> = {
        if let url = getenv("ANYRUNTIME_PG_URL").map({ String(cString: $0) }), !url.isEmpty { return .success(url) }
        return startThrowAwayServer()
    }()

    /// Runs `scripts/with-postgres.sh` with a command that prints the URL and then waits for this process to
    /// end; the script stops and deletes the cluster when its command ends.
    private static func startThrowAwayServer() -> Result<String, Unavailable> {
        let root = String(#filePath.utf8.split(separator: UInt8(ascii: "/")).dropLast(3).reduce(into: "") { path, part in
            path += "/" + String(decoding: part, as: UTF8.self)
        })
        let script = root + "/scripts/with-postgres.sh"
        guard access(script, X_OK) == 0 || access(script, R_OK) == 0 else {
            return .failure(Unavailable(description: "no PostgreSQL server: ANYRUNTIME_PG_URL is not set and \(script) is missing"))
        }
        // The command's stdin is a pipe whose other end only this process holds: when the process ends (and
        // even while it is a zombie nobody reaped yet) the kernel closes it, `cat` sees the end of input, and
        // the script stops the server.
        let waitForParent = "echo \"URL=$ANYRUNTIME_PG_URL\"; cat >/dev/null"
        var pipe: [Int32] = [-1, -1]
        var lifeline: [Int32] = [-1, -1]
        guard Glibc.pipe(&pipe) == 0, Glibc.pipe(&lifeline) == 0 else { return .failure(Unavailable(description: "pipe() failed")) }
        // Kept open for the life of this process, and out of every other process it starts.
        _ = fcntl(lifeline[1], F_SETFD, FD_CLOEXEC)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe[1], 1)
        posix_spawn_file_actions_addclose(&actions, pipe[0])
        posix_spawn_file_actions_adddup2(&actions, lifeline[0], 0)
        posix_spawn_file_actions_addclose(&actions, lifeline[1])
        let arguments = ["bash", script, "bash", "-c", waitForParent]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child = pid_t()
        let rc = posix_spawnp(&child, "bash", &actions, nil, &argv, environ)
        close(pipe[1])
        close(lifeline[0])
        defer { close(pipe[0]) }
        guard rc == 0 else {
            return .failure(Unavailable(description: "could not run \(script): \(String(cString: strerror(rc)))"))
        }
        // Read the script's output up to the URL line (initdb and start-up take a few seconds).
        var output: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            let count = read(pipe[0], &buffer, buffer.count)
            if count <= 0 { break }
            output += buffer[0..<count]
            let text = String(decoding: output, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("URL=") }), text.hasSuffix("\n") {
                return .success(String(line.dropFirst(4)))
            }
        }
        return .failure(Unavailable(description:
            "no PostgreSQL server: ANYRUNTIME_PG_URL is not set and scripts/with-postgres.sh could not start a throw-away "
            + "one (its messages are above; install the postgresql package, or set ANYRUNTIME_PG_URL=postgresql://user@host:port/db)"))
    }
}
