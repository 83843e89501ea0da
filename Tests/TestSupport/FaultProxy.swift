// A TCP proxy on loopback between a driver and a real server, for the fault suite: it passes bytes through,
// or delays them, stalls (accepts and never answers), cuts or resets connections on command. One thread of
// its own polls every socket, so the faults it makes cost the process under test nothing but the faults.
#if canImport(Glibc)
import Glibc
#endif
import Runtime

public final class FaultProxy: Sendable {
    /// What the proxy does with traffic from now on.
    public enum Mode: Sendable, Equatable {
        /// Forward every byte at once.
        case pass
        /// Forward every byte after this delay.
        case delay(Duration)
        /// Forward the bytes of the connections accepted before the `firstNew`-th after this delay, and those of
        /// later ones at once (see ``delayOpenConnections(by:)``).
        case delayOpen(Duration, firstNew: Int)
        /// Accept new connections and read nothing, forward nothing, in either direction: a server that
        /// stopped answering (existing connections stall too).
        case stall
    }

    /// Why the proxy could not start.
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// The port it listens on (127.0.0.1).
    public let port: Int
    private let listener: Int32
    private let wake: (read: Int32, write: Int32)
    private let state: Locked<State>
    private let target: Int
    private let thread = Locked<pthread_t?>(nil)

    private struct Pending {
        var bytes: [UInt8]
        var due: Int64  // CLOCK_MONOTONIC nanoseconds
    }

    private struct Pair {
        var client: Int32
        var server: Int32
        /// Its place among the accepted connections (0 for the first).
        var serial: Int
        /// Bytes read and not yet written, per direction, in arrival order.
        var toServer: [Pending] = []
        var toClient: [Pending] = []
    }

    private struct State {
        var mode: Mode = .pass
        var pairs: [Pair] = []
        var command: Command?
        var stopped = false
        var accepted = 0
        /// Why connections were closed by the proxy itself (not on command), most recent last.
        var closures: [String] = []
    }

    private enum Command { case cut, reset }

    /// Starts a proxy to `127.0.0.1:targetPort`.
    public init(targetPort: Int) throws(Failure) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket() failed: \(errno)") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            close(fd)
            throw Failure(description: "bind/listen on 127.0.0.1 failed: \(errno)")
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw Failure(description: "pipe() failed: \(errno)")
        }
        for end in pipeFDs {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
        listener = fd
        wake = (pipeFDs[0], pipeFDs[1])
        port = Int(UInt16(bigEndian: address.sin_port))
        target = targetPort
        state = Locked(State())
        let context = Unmanaged.passRetained(self).toOpaque()
        var handle = pthread_t()
        let rc = pthread_create(&handle, nil, { context in
            guard let context else { return nil }
            Unmanaged<FaultProxy>.fromOpaque(context).takeRetainedValue().run()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<FaultProxy>.fromOpaque(context).release()
            throw Failure(description: "pthread_create failed: \(rc)")
        }
        thread.withLock { $0 = handle }
    }

    /// A PostgreSQL URL to this proxy, made from `url` (which points at the target): its host and port
    /// replaced.
    public func url(from url: String) throws(Failure) -> String {
        guard let at = url.firstIndex(of: "@"), let slash = url[at...].firstIndex(of: "/") else {
            throw Failure(description: "the URL \(url) has no user@host:port/ part to point at the proxy")
        }
        return String(url[..<at]) + "@127.0.0.1:\(port)" + String(url[slash...])
    }

    /// A proxy that accepts connections and never answers: a server that stopped (its target is never used).
    public static func silent() throws(Failure) -> FaultProxy {
        let proxy = try FaultProxy(targetPort: 1)
        proxy.set(.stall)
        return proxy
    }

    /// Connections accepted so far.
    public var accepted: Int { state.withLock { $0.accepted } }

    /// Why the proxy closed connections by itself, most recent last (for a failing test's message).
    public var closures: [String] { state.withLock { $0.closures } }

    /// Open connection pairs.
    public var openConnections: Int { state.withLock { $0.pairs.count } }

    /// Changes what the proxy does with traffic from now on.
    public func set(_ mode: Mode) {
        state.withLock { $0.mode = mode }
        poke()
    }

    /// Delays the traffic of the connections open now by `delay`, in both directions, and passes that of new
    /// ones at once: a statement that reaches its server late while a cancel request (a connection of its own)
    /// arrives at once.
    public func delayOpenConnections(by delay: Duration) {
        state.withLock { $0.mode = .delayOpen(delay, firstNew: $0.accepted) }
        poke()
    }

    /// Closes every open connection in both directions (a FIN to each side).
    public func cutAll() {
        state.withLock { $0.command = .cut }
        poke()
        waitForCommand()
    }

    /// Resets every open connection (an RST to each side).
    public func resetAll() {
        state.withLock { $0.command = .reset }
        poke()
        waitForCommand()
    }

    /// Stops the proxy: closes every connection and the listener, and joins its thread.
    public func stop() {
        state.withLock { $0.stopped = true }
        poke()
        if let handle = thread.withLock({ state -> pthread_t? in defer { state = nil }; return state }) {
            pthread_join(handle, nil)
        }
    }

    deinit {
        close(listener)
        close(wake.read)
        close(wake.write)
    }

    private func poke() {
        var byte: UInt8 = 1
        _ = write(wake.write, &byte, 1)
    }

    private func waitForCommand() {
        while state.withLock({ $0.command != nil && !$0.stopped }) { usleep(1_000) }
    }

    private static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
    }

    private func connectToTarget() -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(target).bigEndian
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            close(fd)
            return -1
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        return fd
    }

    private static func closePair(_ pair: Pair, reset: Bool) {
        for fd in [pair.client, pair.server] where fd >= 0 {
            if reset {
                var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
                setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
            }
            close(fd)
        }
    }

    private func run() {
        while true {
            var (mode, pairs, command, stopped) = state.withLock { ($0.mode, $0.pairs, $0.command, $0.stopped) }
            if stopped {
                for pair in pairs { Self.closePair(pair, reset: false) }
                state.withLock { $0.pairs = [] }
                return
            }
            if let command {
                for pair in pairs { Self.closePair(pair, reset: command == .reset) }
                pairs = []
                state.withLock {
                    $0.pairs = []
                    $0.command = nil
                }
                continue
            }
            let stalled = mode == .stall
            var fds = [pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0), pollfd(fd: listener, events: Int16(POLLIN), revents: 0)]
            var nextDue: Int64?
            for pair in pairs {
                // Stalled: nothing is read (the kernel's buffers fill, as with a server that stopped).
                fds.append(pollfd(fd: pair.client, events: stalled ? 0 : Int16(POLLIN), revents: 0))
                fds.append(pollfd(fd: pair.server, events: stalled ? 0 : Int16(POLLIN), revents: 0))
                for pending in pair.toServer + pair.toClient { nextDue = min(nextDue ?? pending.due, pending.due) }
            }
            let now = Self.now()
            let timeout: Int32 = stalled ? -1 : nextDue.map { Int32(clamping: max(0, ($0 - now + 999_999) / 1_000_000)) } ?? -1
            _ = poll(&fds, nfds_t(fds.count), timeout)
            if fds[0].revents != 0 {
                var sink = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wake.read, &sink, sink.count) > 0 {}
            }
            // The mode may have changed while polling (set() pokes the wake pipe): a connection accepted now
            // follows the current one, not the one read before the poll.
            let stalledNow = state.withLock { $0.mode == .stall }
            if fds[1].revents != 0 {
                let client = accept(listener, nil, nil)
                if client >= 0 {
                    _ = fcntl(client, F_SETFD, FD_CLOEXEC)
                    _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
                    // Stalled: the connection is accepted and left unanswered (no connection to the target).
                    let server = stalledNow ? -1 : connectToTarget()
                    if !stalledNow, server < 0 {
                        let reason = "cannot connect to the target: errno \(errno)"
                        state.withLock { $0.closures.append(reason) }
                        close(client)
                    } else {
                        pairs.append(Pair(client: client, server: server, serial: state.withLock { $0.accepted }))
                    }
                    state.withLock { $0.accepted += 1 }
                }
            }
            func nanoseconds(_ duration: Duration) -> Int64 {
                duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000
            }
            var alive: [Pair] = []
            for (index, var pair) in pairs.enumerated() {
                let delay: Int64 =
                    switch mode {
                    case .delay(let duration): nanoseconds(duration)
                    case .delayOpen(let duration, let firstNew): pair.serial < firstNew ? nanoseconds(duration) : 0
                    case .pass, .stall: 0
                    }
                var open = true
                // Pairs accepted in this round were not polled yet.
                let polled = 3 + index * 2 < fds.count
                let clientEvents = polled ? fds[2 + index * 2].revents : 0
                let serverEvents = polled ? fds[3 + index * 2].revents : 0
                if stalledNow {
                    // Nothing is read while stalled, but a side that hung up is closed (else poll reports the
                    // hang-up at once, forever).
                    let hangUp = Int16(POLLHUP) | Int16(POLLERR)
                    open = (clientEvents | serverEvents) & hangUp == 0
                } else if pair.server < 0 {
                    open = false  // accepted during a stall: cut now that traffic flows again
                } else {
                    if clientEvents != 0 { open = Self.receive(pair.client, into: &pair.toServer, due: now + delay) && open }
                    if serverEvents != 0 { open = Self.receive(pair.server, into: &pair.toClient, due: now + delay) && open }
                    let current = Self.now()
                    open = Self.flush(&pair.toServer, to: pair.server, now: current) && open
                    open = Self.flush(&pair.toClient, to: pair.client, now: current) && open
                }
                if open {
                    alive.append(pair)
                } else {
                    let reason = "closed after EOF or an error (errno \(errno))"
                    state.withLock { $0.closures.append(reason) }
                    if pair.server >= 0 {
                        _ = Self.flush(&pair.toClient, to: pair.client, now: .max)
                        _ = Self.flush(&pair.toServer, to: pair.server, now: .max)
                    }
                    Self.closePair(pair, reset: false)
                }
            }
            state.withLock { $0.pairs = alive }
        }
    }

    /// Reads what is there; false at the end of the stream or on an error (what was read before is queued,
    /// and the caller writes it before closing: a server's last words, such as a FATAL error, arrive).
    private static func receive(_ fd: Int32, into queue: inout [Pending], due: Int64) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        let count = recv(fd, &buffer, buffer.count, 0)
        if count > 0 {
            queue.append(Pending(bytes: Array(buffer[0..<count]), due: due))
            return true
        }
        return count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
    }

    /// Writes what is due (blocking briefly if the peer's buffer is full); false on an error.
    private static func flush(_ queue: inout [Pending], to fd: Int32, now: Int64) -> Bool {
        while let first = queue.first, first.due <= now {
            var offset = 0
            while offset < first.bytes.count {
                let written = first.bytes.withUnsafeBytes { bytes -> Int in
                    guard let base = bytes.baseAddress else { return -1 }
                    return send(fd, base + offset, first.bytes.count - offset, Int32(MSG_NOSIGNAL))
                }
                if written > 0 {
                    offset += written
                } else if written < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR {
                    var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&pfd, 1, 100)
                } else {
                    return false
                }
            }
            queue.removeFirst()
        }
        return true
    }
}
