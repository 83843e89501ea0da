import CLibPQ
import Logging
import Runtime

#if canImport(Glibc)
import Glibc
#endif

/// What a cancel request for one connection needs — the server's address, the backend's process ID and its
/// secret key — and the request itself, sent without blocking through the runtime's readiness wait.
///
/// libpq 15's `PQcancel` blocks while it connects and then waits, with no time limit, for the server to close
/// the request's connection: against a server that accepts connections and never answers, a thread is held for
/// good. libpq 15 has no non-blocking cancel (`PQcancelStart` arrives in libpq 17) and does not export the
/// secret key, so the key is read from libpq's cancel object (see the C shim: the fields every release from 9.x
/// through 17 begins it with; only those versions are read), checked against what libpq reports about the
/// connection, and the 16-byte request is sent here. Otherwise (another libpq), `PQcancel` runs instead, on
/// worker threads of its own (``PostgresConnection/cancelLimiter``), so it can never starve the runtime's
/// shared blocking pool.
struct PostgresCancelKey: Sendable, Equatable {
    /// The server's socket address, as libpq connected to it.
    let address: [UInt8]
    let family: Int32
    let processID: Int32
    let secret: Int32

    /// Reads the key from libpq's cancel object; nil unless it is consistent with the connection.
    static func read(_ cancel: OpaquePointer, backendPID: Int32) -> PostgresCancelKey? {
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        var processID: Int32 = 0
        var secret: Int32 = 0
        anyruntime_pq_cancel_fields(cancel, &storage, &length, &processID, &secret)
        let family = Int32(storage.ss_family)
        guard family == AF_INET || family == AF_INET6 || family == AF_UNIX,
            length > 0, Int(length) <= MemoryLayout<sockaddr_storage>.size,
            processID == backendPID, backendPID != 0
        else { return nil }
        let address = withUnsafeBytes(of: &storage) { Array($0.prefix(Int(length))) }
        return PostgresCancelKey(address: address, family: family, processID: processID, secret: secret)
    }

    /// The request: length 16, the cancel request code 80877102, the process ID and the key, big-endian.
    var packet: [UInt8] {
        [Int32(16), 80_877_102, processID, secret].flatMap { value in
            withUnsafeBytes(of: value.bigEndian) { Array($0) }
        }
    }

    /// Sends the request on a new connection to the server and waits until the server closes it, as libpq
    /// does: the server has then handled the request, so a late cancel cannot hit a later statement. Every
    /// wait is the runtime's, so the caller's cancel scope bounds it. Returns whether the server took it.
    func send(on runtime: Runtime) async throws -> Bool {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        do {
            let sent = try await exchange(fd, runtime)
            await runtime.forget(fd: fd)
            _ = close(fd)
            return sent
        } catch {
            await runtime.forget(fd: fd)
            _ = close(fd)
            throw error
        }
    }

    private func exchange(_ fd: Int32, _ runtime: Runtime) async throws -> Bool {
        let connected = address.withUnsafeBytes { bytes -> Int32 in
            guard let base = bytes.baseAddress else { return -1 }
            return connect(fd, base.assumingMemoryBound(to: sockaddr.self), socklen_t(bytes.count))
        }
        if connected != 0 {
            guard errno == EINPROGRESS || errno == EAGAIN else { return false }
            _ = try await runtime.wait(fd: fd, for: .write)
            var error: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0, error == 0 else { return false }
        }
        let packet = self.packet
        var offset = 0
        while offset < packet.count {
            let written = packet.withUnsafeBytes { bytes -> Int in
                guard let base = bytes.baseAddress else { return -1 }
                return Glibc.send(fd, base + offset, packet.count - offset, Int32(MSG_NOSIGNAL))
            }
            if written > 0 {
                offset += written
                continue
            }
            guard written < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR else { return false }
            _ = try await runtime.wait(fd: fd, for: .write)
        }
        // The server answers nothing: it closes the connection once it has handled the request.
        while true {
            var byte: UInt8 = 0
            let read = recv(fd, &byte, 1, 0)
            if read >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { return true }
            _ = try await runtime.wait(fd: fd, for: .read)
        }
    }
}

/// The cancel requests of one call: sent again and again until the call stops them, and done once the last
/// one has been handled by the server (or given up).
struct CancelRequests: Sendable {
    /// Set by the call once it needs no more requests: before it reuses or gives back the connection.
    let stop = Event()
    /// Set when no request is on its way any more.
    let done = Event()
}

extension PostgresConnection {
    /// How long cancel requests may take, on their own, out of the caller's way.
    static let cancelRequestDeadline: Duration = .seconds(10)
    /// How long after the first handled cancel request, while the call has not settled (its results not all
    /// read: a NOTICE or the first rows are no answer to a cancel), a second and last one is sent.
    ///
    /// The server drops a cancel that reaches a backend between reading messages — one that has not yet read
    /// the statement (a loaded server, a statement still on its way) — so one request can be lost. Sending
    /// again is harmless: a request that finds the statement finished finds the backend idle, and is dropped.
    /// Only once: each request is a connection and a process on the server, and a server slow for every client
    /// (a ThreadSanitizer run) must not be sent more of them the slower it gets.
    static let cancelResendInterval: Duration = .seconds(2)
    /// Requests per cancellation: the first and one more.
    static let cancelRequestsAtMost = 2
    /// The least a settle waits for the requests' task (see ``settleCancelRequest()``).
    static let settleMoment: Duration = .milliseconds(20)

    /// The worker threads for `PQcancel` when the key cannot be read (see ``PostgresCancelKey``): apart from
    /// the runtime's shared pool, so that cancel requests stuck on silent servers can never hold its tokens.
    static let cancelLimiter: CapacityLimiter? = try? CapacityLimiter(totalTokens: 4)

    /// Asks the server to cancel the running statement. The requests are sent by a system task of the run,
    /// within ``cancelRequestDeadline``, so the caller never waits for them beyond its own deadline: one at
    /// once, then one more ``cancelResendInterval`` later unless the call has settled.
    /// The call waits for the last one only before it uses or gives back the connection again
    /// (``settleCancelRequest()``).
    func requestCancel() {
        let requests = CancelRequests()
        // One series per call: a second ask while requests are still being sent has nothing to add.
        let fresh = cancelRequest.withLock { current -> Bool in
            if let current, !current.stop.isSet { return false }
            current = requests
            return true
        }
        guard fresh else { return }
        let key = cancelKey.withLock { $0 }
        // Taken now, while this call holds the connection (libpq's connection is not touched afterwards).
        let fallback = key == nil ? handle.cancelObject() : nil
        let runtime = self.runtime
        let logger = self.logger
        let started = runtime.startSystemTask {
            let deadline = runtime.now.advanced(by: Self.cancelRequestDeadline)
            var taken = false
            var sentCount = 0
            while !requests.stop.isSet, runtime.now < deadline {
                sentCount += 1
                let sent: Bool? = try? await withCancelScope(deadline: deadline) { _ in
                    if let key { return try await key.send(on: runtime) }
                    guard let fallback, let limiter = Self.cancelLimiter else { return false }
                    return try await runtime.runBlocking(limiter: limiter, onCancel: .abandon) { fallback.send() }
                }
                taken = taken || sent == true
                guard sentCount < Self.cancelRequestsAtMost else { break }
                let pause = min(deadline, runtime.now.advanced(by: Self.cancelResendInterval))
                do {
                    _ = try await withCancelScope(deadline: pause) { _ in try await requests.stop.wait() }
                } catch {
                    break  // the run is ending: it cancels its system tasks
                }
            }
            if !taken {
                logger?.info("a PostgreSQL cancel request got no answer within \(Self.cancelRequestDeadline)")
            }
            requests.done.set()
        }
        if !started { requests.done.set() }
    }

    /// Before the connection is used again or given back after a cancel request: stops further requests and
    /// waits, shielded, for the last one to be handled — until the call's cancellation deadline, or
    /// ``cancellationWait(now:)``. One still on its way could cancel the next statement on this connection, so
    /// then the connection is given up instead.
    func settleCancelRequest() async {
        guard let requests = cancelRequest.withLock({ request -> CancelRequests? in defer { request = nil }; return request })
        else { return }
        requests.stop.set()
        if requests.done.isSet { return }
        // Given up already: it is never reused, so nothing can be hit.
        let (broken, known) = machine.withLock { ($0.isBroken, $0.settleDeadline) }
        if broken { return }
        let now = runtime.now
        // At least a moment for the requests' task to see it is done with: after a stall of the process the
        // deadline may have passed while the last request was long handled.
        let deadline = max(known ?? now.advanced(by: cancellationWait(now: now)), now.advanced(by: Self.settleMoment))
        let settled: Void?? = try? await withCancelScope(deadline: deadline, shield: true) { _ in try await requests.done.wait() }
        if case .some(.some) = settled { return }
        markBroken("a cancel request was still on its way (it could cancel the next statement)")
    }
}
