import CLibPQ
import Logging
import Runtime

#if canImport(Glibc)
import Glibc
#endif

// Connecting: every host resolved off the loop, then libpq's non-blocking connect, waited on through the
// runtime.

extension PostgresConnection {
    /// How long connecting (name resolution included) may take when neither the URL's `connect_timeout` nor
    /// the pool's ``PoolConfiguration/connectTimeout`` says: libpq's own default is to wait forever.
    static let defaultConnectTimeout: Duration = .seconds(10)

    /// Connects to `url` on the current runtime, within the URL's `connect_timeout`, else `timeout` (the
    /// pool's), else 10 s — for all of it: name resolution and every host tried.
    ///
    /// - Parameters:
    ///   - timeout: the pool's connect timeout, when it has one.
    ///   - grace: how long a call waits, beyond its caller's deadline, for the server's answer.
    static func connect(
        _ url: DatabaseURL, logger: Logger? = nil, timeout poolTimeout: Duration? = nil,
        grace: Duration = PostgresConnection.defaultGrace, password passwordProvider: Engine.PasswordProvider? = nil,
        preparedStatements: PreparedStatements = .automatic
    ) async throws -> PostgresConnection {
        let runtime = try Runtime.current
        let seconds = url.parameters.last { $0.key == "connect_timeout" }.flatMap { Int($0.value) }.flatMap { $0 > 0 ? $0 : nil }
        let timeout = seconds.map { Duration.seconds($0) } ?? poolTimeout ?? defaultConnectTimeout
        var started: PostgresConnection?
        do {
            return try await fail(at: runtime.now.advanced(by: timeout)) {
                var libpq = url.libpqParameters()
                var password: String?
                if let passwordProvider {
                    do {
                        password = try await passwordProvider()
                    } catch is CancellationError {
                        throw CancellationError()
                    } catch {
                        // Its error is the application's: it may quote what it was fetching. Named, not quoted.
                        throw SQLError(.connection, "the password provider failed (\(type(of: error)))")
                    }
                    libpq.append(("password", password ?? ""))
                }
                // PQconnectStart blocks on its way: it reads the service and password files, asks the system
                // for the user's name (which may ask a directory server), and resolves the first host's name.
                // So the start runs on a worker thread (abandoned at the timeout: getaddrinfo cannot be
                // interrupted; a handle that arrives too late is finished there), after every host name —
                // the URL's, or the one libpq's defaults take from PGHOST — is resolved to its addresses, so
                // that libpq never resolves one inside the non-blocking connect, on the loop, when it moves
                // on to the next host.
                let unresolved = libpq
                let handle = try await runtime.runBlocking(onCancel: .abandon) { () throws -> PGHandle in
                    try PGHandle.start(try resolvingHosts(withHostDefaults(unresolved, defaults: libpqHostDefaults), resolve: resolve))
                }
                let connection = PostgresConnection(runtime: runtime, handle: handle, logger: logger, grace: grace)
                started = connection
                do {
                    try await connection.finishConnecting()
                } catch let error as SQLError where DatabaseURL.quotesPart(of: password, in: error.message) {
                    // libpq does not quote passwords; should one ever appear, it goes no further.
                    throw SQLError(error.kind, "cannot connect (libpq's message is withheld: it quotes the password)")
                }
                try await connection.settleSession(preparedStatements)
                return connection
            }
        } catch is TimeoutError {
            await started?.close()
            let which = seconds.map { "connect_timeout (\($0) s)" }
                ?? poolTimeout.map { "the connect timeout (\($0))" } ?? "\(timeout) (the default connect timeout)"
            throw SQLError(.timeout, "connecting took longer than \(which)")
        } catch {
            await started?.close()
            throw error
        }
    }

    /// After the handshake: the settings the driver relies on, checked against what the server reported (a
    /// pooler may have dropped the startup options that set them), and how statements are prepared. At most
    /// one round trip, through the simple query protocol.
    private func settleSession(_ preparedStatements: PreparedStatements) async throws {
        var commands: [String] = []
        if !(handle.parameterStatus("DateStyle") ?? "ISO").hasPrefix("ISO") { commands.append("SET DateStyle = 'ISO, MDY'") }
        if (handle.parameterStatus("IntervalStyle") ?? "postgres") != "postgres" { commands.append("SET IntervalStyle = 'postgres'") }
        let detect = preparedStatements.mode == .automatic
        if detect { commands.append("SELECT pg_backend_pid()") }
        if preparedStatements.mode == .unnamed { statements.withLock { $0.unnamed = true } }
        guard !commands.isEmpty else { return }
        let script = commands.joined(separator: "; ")
        let rows = try await exclusively(.script, script) {
            try await cleaningUp {
                guard handle.sendSimpleQuery(script) else { throw await failure(sql: script) }
                try await flush(sql: script)
                return try await collect(sql: script)
            }
        }
        // Poolers answer the startup handshake themselves, with a process ID of their own.
        guard detect, rows.rowCount == 1, case .integer(let pid)? = rows.row(0)[0], pid != Int64(handle.backendPID) else { return }
        statements.withLock { $0.unnamed = true }
        logger?.info("the connection goes through a pooler (its process ID is not the server's): statements are sent unnamed")
    }

    private func finishConnecting() async throws {
        var status = PGRES_POLLING_WRITING
        while true {
            let fd = handle.socket
            switch status {
            case PGRES_POLLING_OK:
                guard handle.setNonBlocking() else { throw handle.connectionError("cannot enter non-blocking mode") }
                handle.silenceNotices()
                let key = handle.cancelKey()
                cancelKey.withLock { $0 = key }
                if key == nil {
                    logger?.info("libpq's cancel key cannot be read: cancel requests use PQcancel, on worker threads of their own")
                }
                if handle.usesTLS, !PGHandle.canSeePendingTLSData {
                    logger?.warning(
                        "libpq's OpenSSL was not found (SSL_pending): with a server that writes TLS records over 8 KiB, a wait may not see the end of an answer until its deadline")
                }
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
                _ = try await waitForSocket(fd, for: status == PGRES_POLLING_READING ? .read : .write)
            }
            // PQconnectPoll may close the socket and open a new one with the same number (SSL or GSS
            // fallback, another host): drop the registration after every step.
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

/// `parameters`, with the host, address and port libpq would take from the environment when they name none,
/// so that a host name from `PGHOST` is resolved beforehand like the URL's (libpq would look it up inside its
/// non-blocking connect). Unchanged when they name a host or an address, or a `service` (whose file comes
/// before the environment in libpq's order, and is read only by libpq: a host name given only there is looked
/// up by libpq itself).
func withHostDefaults(
    _ parameters: [(key: String, value: String)], defaults: () -> [(key: String, value: String)]
) -> [(key: String, value: String)] {
    guard !parameters.contains(where: { $0.key == "host" || $0.key == "hostaddr" || $0.key == "service" }) else { return parameters }
    let found = defaults().filter { $0.key == "host" || $0.key == "hostaddr" || ($0.key == "port" && !parameters.contains { $0.key == "port" }) }
    return parameters + found
}

/// libpq's own defaults for `host`, `hostaddr` and `port`: the environment (`PGHOST`, `PGHOSTADDR`,
/// `PGPORT`, the `PGSERVICE` entry), else what it was built with; a value it leaves unset is left out.
func libpqHostDefaults() -> [(key: String, value: String)] {
    guard let options = PQconndefaults() else { return [] }
    defer { PQconninfoFree(options) }
    var found: [(key: String, value: String)] = []
    var option = options
    while let keyword = option.pointee.keyword {
        let key = String(cString: keyword)
        if key == "host" || key == "hostaddr" || key == "port", let value = option.pointee.val, value.pointee != 0 {
            found.append((key, String(cString: value)))
        }
        option += 1
    }
    return found
}

/// Whether `host` is a numeric IPv4 or IPv6 address (which needs no lookup).
func isLiteralAddress(_ host: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
}

/// Resolves `host` to a numeric address (blocking: call on a worker thread); a literal address is itself.
func resolve(_ host: String) throws -> [String] {
    if isLiteralAddress(host) { return [host] }
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
