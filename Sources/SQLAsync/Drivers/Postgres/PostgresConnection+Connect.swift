import CLibPQ
import Logging
import Runtime

#if canImport(Glibc)
import Glibc
#endif

// Connecting: every host resolved off the loop, then libpq's non-blocking connect, waited on through the
// runtime.

extension PostgresConnection {
    /// Connects to `url` on the current runtime.
    static func connect(_ url: DatabaseURL, logger: Logger? = nil) async throws -> PostgresConnection {
        let runtime = try Runtime.current
        // Name resolution would block inside PQconnectStart: every host is resolved on a worker thread, and
        // libpq is given the addresses.
        let parameters = try await runtime.runBlocking { () throws -> [(key: String, value: String)] in
            try resolvingHosts(url.libpqParameters(), resolve: resolve)
        }
        let handle = try PGHandle.start(parameters)
        let connection = PostgresConnection(runtime: runtime, handle: handle, logger: logger)
        // libpq applies connect_timeout only to its blocking connect: enforce it here.
        let timeout = url.parameters.last { $0.key == "connect_timeout" }.flatMap { Int($0.value) }.flatMap { $0 > 0 ? $0 : nil }
        do {
            if let timeout {
                try await fail(at: runtime.now.advanced(by: .seconds(timeout))) { try await connection.finishConnecting() }
            } else {
                try await connection.finishConnecting()
            }
        } catch is TimeoutError {
            await connection.close()
            throw SQLError(.timeout, "connecting took longer than connect_timeout (\(timeout ?? 0) s)")
        } catch {
            await connection.close()
            throw error
        }
        return connection
    }

    private func finishConnecting() async throws {
        var status = PGRES_POLLING_WRITING
        while true {
            let fd = handle.socket
            switch status {
            case PGRES_POLLING_OK:
                guard handle.setNonBlocking() else { throw handle.connectionError("cannot enter non-blocking mode") }
                handle.silenceNotices()
                watchedSocket.store(handle.socket, ordering: .releasing)
                machine.withLock { $0.connected() }
                return
            case PGRES_POLLING_FAILED:
                throw handle.connectionError("cannot connect")
            default:
                // Recorded before the wait, so that a cancelled connect forgets it in `close()` before
                // PQfinish closes the socket (a registration outliving its fd hangs the next socket that
                // gets the same number).
                watchedSocket.store(fd, ordering: .releasing)
                try await runtime.wait(fd: fd, for: status == PGRES_POLLING_READING ? .read : .write)
            }
            // PQconnectPoll may close the socket and open a new one with the same number (SSL or GSS
            // fallback, another host): drop the registration after every step (FINDINGS Q6, pitfall 1).
            await forgetSocket()
            status = handle.connectPoll()
        }
    }
}

/// `parameters` with every host name resolved by `resolve` (blocking: call on a worker thread): libpq gets
/// one `host` entry per address with the address beside it in `hostaddr` (the name kept for TLS
/// verification and messages), and the ports to match, so that it never resolves a name itself, inside the
/// non-blocking connect. Hosts given in a query parameter are resolved like the URL's. A socket directory
/// (`/…` or `@…`) needs no address (an empty `hostaddr` entry). Unchanged when the parameters give
/// `hostaddr` themselves.
func resolvingHosts(
    _ parameters: [(key: String, value: String)], resolve: (String) throws -> [String]
) throws -> [(key: String, value: String)] {
    guard !parameters.contains(where: { $0.key == "hostaddr" }),
        let hostList = parameters.last(where: { $0.key == "host" })?.value, !hostList.isEmpty
    else { return parameters }
    let hosts = hostList.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
    let portList = parameters.last { $0.key == "port" }?.value
    let ports = portList.map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) } ?? []
    var names: [String] = []
    var addresses: [String] = []
    var expandedPorts: [String] = []
    for (index, host) in hosts.enumerated() {
        let port = ports.count > 1 && index < ports.count ? ports[index] : ports.first ?? ""
        if host.isEmpty || host.hasPrefix("/") || host.hasPrefix("@") {
            names.append(host)
            addresses.append("")
            expandedPorts.append(port)
            continue
        }
        // Every address, tried in order by libpq (IPv6 `::1` first for localhost, say, then 127.0.0.1).
        for address in try resolve(host) {
            names.append(host)
            addresses.append(address)
            expandedPorts.append(port)
        }
    }
    var result = parameters.filter { $0.key != "host" && $0.key != "port" }
    result.append(("host", names.joined(separator: ",")))
    result.append(("hostaddr", addresses.joined(separator: ",")))
    if portList != nil { result.append(("port", expandedPorts.joined(separator: ","))) }
    return result
}

/// Resolves `host` to a numeric address (blocking: call on a worker thread).
func resolve(_ host: String) throws -> [String] {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var list: UnsafeMutablePointer<addrinfo>?
    let rc = getaddrinfo(host, nil, &hints, &list)
    guard rc == 0, list != nil else {
        throw SQLError(.connection, "cannot resolve host '\(host)': \(String(cString: gai_strerror(rc)))")
    }
    defer { freeaddrinfo(list) }
    var addresses: [String] = []
    var entry = list
    while let current = entry {
        var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        if getnameinfo(current.pointee.ai_addr, current.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
            let address = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !addresses.contains(address) { addresses.append(address) }
        }
        entry = current.pointee.ai_next
    }
    guard !addresses.isEmpty else { throw SQLError(.connection, "cannot format the addresses of host '\(host)'") }
    return addresses
}
