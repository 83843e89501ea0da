import Dispatch
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A read or write `DispatchSource` (not `Sendable` on Linux).
final class DispatchSourceBox: @unchecked Sendable {
    // @unchecked Sendable: DispatchSource's methods are thread-safe per libdispatch; `suspended` is read
    // and written only under the registry's mutex.
    let source: any DispatchSourceProtocol
    var suspended = false
    init(_ source: any DispatchSourceProtocol) { self.source = source }
}

/// The persistent read and write sources of one fd, resumed while somebody waits and suspended otherwise.
struct DispatchFD: Sendable {
    /// The file the fd named when its sources were made (a different one: closed without forget, reused).
    var identity: DescriptorIdentity
    var read: DispatchSourceBox?
    var write: DispatchSourceBox?
    var reader: ReadinessWatch?
    var writer: ReadinessWatch?
}

/// The fd registry of a dispatch runtime.
final class DispatchPollRegistry: Sendable {
    private let table = Locked<[Int32: DispatchFD]>([:])
    private let ioQueue: DispatchQueue

    init(ioQueue: DispatchQueue) { self.ioQueue = ioQueue }

    var watchedDescriptors: Int { table.withLock { $0.count } }

    func register(_ watch: ReadinessWatch) throws(RuntimeError) {
        let fd = watch.fd
        // A source on a closed fd would never fire: refuse it instead of waiting forever.
        let identity = try DescriptorCheck.identity(of: fd)
        let stale = try table.withLock { table throws(RuntimeError) -> DispatchFD? in
            if let old = table[fd], old.identity != identity {
                // Closed without forget and reused: the old sources watch a file that is gone, and libdispatch
                // keys its epoll registration by fd number, so new sources made before the old ones are
                // cancelled would join that dead registration and never fire. Register once they are gone.
                table[fd] = nil
                return old
            }
            if table[fd] == nil { try DescriptorCheck.requireNonBlocking(fd) }
            var entry = table[fd] ?? DispatchFD(identity: identity)
            let wantsRead = watch.events.contains(.read)
            let wantsWrite = watch.events.contains(.write)
            if (wantsRead && entry.reader != nil) || (wantsWrite && entry.writer != nil) {
                throw RuntimeError(.busy, "another task is already waiting on fd \(fd) for \(watch.events)")
            }
            if wantsRead {
                entry.reader = watch
                entry.read = arm(entry.read, fd: fd, kind: .read)
            }
            if wantsWrite {
                entry.writer = watch
                entry.write = arm(entry.write, fd: fd, kind: .write)
            }
            table[fd] = entry
            return nil
        }
        if let stale {
            Self.discard(stale, failingWith: DescriptorCheck.reusedError(fd)) { [weak self] in
                guard let self else { return watch.finish(.failure(RuntimeError(.closed, "the runtime has ended"))) }
                do throws(RuntimeError) {
                    try self.register(watch)
                } catch {
                    watch.finish(.failure(error))  // an asynchronous registration reports through `ready`
                }
            }
            return
        }
        // A resumed source does not always report a state that began while it was suspended (a peer's
        // hang-up or reset is delivered once): look once, and deliver what is already there.
        let ready = Self.readiness(of: fd, for: watch.events)
        if ready.contains(.read) {
            ioQueue.async { [weak self] in self?.fired(fd: fd, kind: .read) }
        } else if ready.contains(.write) {
            ioQueue.async { [weak self] in self?.fired(fd: fd, kind: .write) }
        }
    }

    /// What `fd` is ready for now, among `events` (an error or hang-up counts as every requested event).
    static func readiness(of fd: Int32, for events: IOEvents) -> IOEvents {
        var probe = pollfd(
            fd: fd,
            events: Int16(events.contains(.read) ? POLLIN : 0) | Int16(events.contains(.write) ? POLLOUT : 0),
            revents: 0)
        guard poll(&probe, 1, 0) > 0 else { return [] }
        if probe.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return events }
        var ready: IOEvents = []
        if probe.revents & Int16(POLLIN) != 0 { ready.insert(.read) }
        if probe.revents & Int16(POLLOUT) != 0 { ready.insert(.write) }
        return ready.intersection(events)
    }

    /// Creates the source on first use, or resumes it if suspended. Under the table lock.
    private func arm(_ box: DispatchSourceBox?, fd: Int32, kind: IOEvents) -> DispatchSourceBox {
        if let box {
            if box.suspended {
                box.suspended = false
                box.source.resume()
            }
            return box
        }
        let source: any DispatchSourceProtocol =
            kind == .read
            ? DispatchSource.makeReadSource(fileDescriptor: fd, queue: ioQueue)
            : DispatchSource.makeWriteSource(fileDescriptor: fd, queue: ioQueue)
        source.setEventHandler { [weak self] in self?.fired(fd: fd, kind: kind) }
        source.activate()
        return DispatchSourceBox(source)
    }

    private func fired(fd: Int32, kind: IOEvents) {
        let (watch, ready) = table.withLock { table -> (ReadinessWatch?, IOEvents) in
            guard var entry = table[fd] else { return (nil, []) }
            let candidate = kind == .read ? entry.reader : entry.writer
            // Sources fire spuriously (and may fire for a state that is gone): report what is really ready, and
            // keep waiting when nothing is.
            let ready = candidate.map { Self.readiness(of: fd, for: $0.events) } ?? []
            let watch: ReadinessWatch? = ready.isEmpty ? nil : candidate
            if let watch {
                if entry.reader === watch { entry.reader = nil }
                if entry.writer === watch { entry.writer = nil }
            }
            // Nobody waits in a direction any more: suspend its source, or level-triggered readiness spins.
            if entry.reader == nil, let box = entry.read, !box.suspended {
                box.suspended = true
                box.source.suspend()
            }
            if entry.writer == nil, let box = entry.write, !box.suspended {
                box.suspended = true
                box.source.suspend()
            }
            table[fd] = entry
            return (watch, ready)
        }
        watch?.finish(.success(ready))
    }

    func unregister(_ watch: ReadinessWatch) {
        table.withLock { table in
            guard var entry = table[watch.fd] else { return }
            if entry.reader === watch { entry.reader = nil }
            if entry.writer === watch { entry.writer = nil }
            table[watch.fd] = entry
        }
    }

    /// Fails the fd's watchers with `closed` and cancels its sources; returns once their cancel handlers
    /// ran, after which the fd may be closed.
    func forget(fd: Int32) async {
        guard let entry = table.withLock({ $0.removeValue(forKey: fd) }) else { return }
        let closed = RuntimeError(.closed, "fd \(fd) was forgotten (about to be closed) while a task waited on it")
        entry.reader?.finish(.failure(closed))
        entry.writer?.finish(.failure(closed))
        for box in [entry.read, entry.write].compactMap({ $0 }) {
            await withUnsafeContinuation { (continuation: UnsafeContinuation<Void, Never>) in
                box.source.setCancelHandler { continuation.resume() }
                box.source.cancel()
                // A suspended source must be resumed before it is cancelled and released.
                if box.suspended {
                    box.suspended = false
                    box.source.resume()
                }
            }
        }
    }

    /// Fails a stale entry's watchers and cancels its sources; calls `then` once every source's cancel handler
    /// has run (libdispatch has dropped its registration of the fd number).
    private static func discard(
        _ entry: DispatchFD, failingWith error: RuntimeError, then: @escaping @Sendable () -> Void
    ) {
        entry.reader?.finish(.failure(error))
        entry.writer?.finish(.failure(error))
        let boxes = [entry.read, entry.write].compactMap { $0 }
        guard !boxes.isEmpty else { return then() }
        let remaining = Atomic<Int>(boxes.count)
        for box in boxes {
            box.source.setCancelHandler {
                if remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 { then() }
            }
            box.source.cancel()
            // A suspended source must be resumed before it is cancelled and released.
            if box.suspended {
                box.suspended = false
                box.source.resume()
            }
        }
    }

    /// Forgets every fd (at the end of a run).
    func forgetAll() async {
        let fds = table.withLock { Array($0.keys) }
        for fd in fds { await forget(fd: fd) }
    }
}
