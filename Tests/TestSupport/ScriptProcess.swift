// A script of this repository run as a child process that talks through pipes, line by line, and whose
// life is bound to this process's: its stdin is a pipe only this process holds, so when this process ends
// (and even while it is a zombie nobody reaped yet) the kernel closes it and the script sees the end of its
// input — the throw-away servers the tests start are stopped and deleted that way, whatever happens.
#if canImport(Glibc)
import Glibc
#endif
import Runtime

final class ScriptProcess: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// The write end of the script's stdin (never inherited by other children).
    private let input: Int32
    /// The read end of the script's stdout, and what was read past the last line returned.
    private let output: Int32
    private let pending = Locked<[UInt8]>([])

    /// The repository's root, from this file's path.
    static let root = String(#filePath.utf8.split(separator: UInt8(ascii: "/")).dropLast(3).reduce(into: "") { path, part in
        path += "/" + String(decoding: part, as: UTF8.self)
    })

    /// Starts `bash scripts/<name> arguments…`.
    init(script name: String, _ arguments: [String] = []) throws(Failure) {
        let script = Self.root + "/scripts/" + name
        guard access(script, R_OK) == 0 else { throw Failure(description: "\(script) is missing") }
        // A script that died must not take the test process with it when written to: EPIPE, not SIGPIPE.
        _ = Self.ignoreBrokenPipes
        // Pipes made and spawned under one lock, every end close-on-exec at once: another script started at the
        // same moment must not get a copy (a script whose stdin stays open elsewhere never sees its end). The
        // child's own ends lose the flag when dup2 puts them on 0 and 1. (Glibc's `pipe2` is not visible to
        // Swift here.)
        let (stdin, stdout) = try Self.spawning.withLock { _ throws(Failure) -> ([Int32], [Int32]) in
            var stdout: [Int32] = [-1, -1]
            var stdin: [Int32] = [-1, -1]
            guard pipe(&stdout) == 0 else { throw Failure(description: "pipe() failed") }
            guard pipe(&stdin) == 0 else {
                close(stdout[0])
                close(stdout[1])
                throw Failure(description: "pipe() failed")
            }
            for fd in stdout + stdin { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_adddup2(&actions, stdout[1], 1)
            posix_spawn_file_actions_adddup2(&actions, stdin[0], 0)
            let argv0 = ["bash", script] + arguments
            var argv: [UnsafeMutablePointer<CChar>?] = argv0.map { strdup($0) } + [nil]
            defer { for pointer in argv { free(pointer) } }
            // An ignored signal stays ignored across exec: the script gets SIGPIPE's default back.
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var defaults = sigset_t()
            sigemptyset(&defaults)
            sigaddset(&defaults, SIGPIPE)
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))
            var child = pid_t()
            let rc = posix_spawnp(&child, "bash", &actions, &attributes, &argv, environ)
            close(stdout[1])
            close(stdin[0])
            guard rc == 0 else {
                close(stdout[0])
                close(stdin[1])
                throw Failure(description: "could not run \(script): \(String(cString: strerror(rc)))")
            }
            return (stdin, stdout)
        }
        input = stdin[1]
        output = stdout[0]
    }

    private static let spawning = Locked<Void>(())
    private static let ignoreBrokenPipes: Void = { _ = signal(SIGPIPE, SIG_IGN) }()

    /// The next line the script prints (blocking), or nil when it closed its output.
    func readLine() -> String? {
        var buffer = [UInt8](repeating: 0, count: 512)
        while true {
            if let line = pending.withLock({ pending -> [UInt8]? in
                guard let newline = pending.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
                defer { pending.removeSubrange(...newline) }
                return Array(pending[..<newline])
            }) {
                return String(decoding: line, as: UTF8.self)
            }
            let count = read(output, &buffer, buffer.count)
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { return nil }
            pending.withLock { $0 += buffer[0..<count] }
        }
    }

    /// Ends the script's input and waits until it has closed its output (it cleans up, then exits). Blocks.
    func finish() {
        close(input)
        while readLine() != nil {}
        close(output)
    }

    /// Sends `line` to the script's stdin.
    func writeLine(_ line: String) throws(Failure) {
        let bytes = Array((line + "\n").utf8)
        let written = bytes.withUnsafeBytes { write(input, $0.baseAddress, $0.count) }
        guard written == bytes.count else { throw Failure(description: "the script's input is closed") }
    }
}
