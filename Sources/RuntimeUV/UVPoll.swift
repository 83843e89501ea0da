import CLibUV
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One watcher of one fd in one or both directions: what ``UVLoop`` keeps in a poll slot.
final class UVWatch: BackendRegistration, @unchecked Sendable {
    // @unchecked Sendable: `ready` is called at most once, on the loop thread, guarded by `finished`
    // (loop thread only); `cancelled` is atomic; the rest is immutable.
    let fd: Int32
    let events: IOEvents
    private let ready: @Sendable (Result<IOEvents, RuntimeError>) -> Void
    private let cancelled = Atomic<Bool>(false)
    // Retained: the watch may be cancelled after the run, from a task that outlived it. (The loop holds the
    // watch only while it is registered, so the cycle ends when the watch does.)
    private let loop: UVLoop
    private var finished = false  // loop thread only

    init(fd: Int32, events: IOEvents, loop: UVLoop, ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void) {
        self.fd = fd
        self.events = events
        self.loop = loop
        self.ready = ready
    }

    var isCancelled: Bool { cancelled.load(ordering: .acquiring) }

    /// Loop thread only.
    func finish(_ result: Result<IOEvents, RuntimeError>) {
        guard !finished else { return }
        finished = true
        if !isCancelled { ready(result) }
    }

    func cancel() {
        if cancelled.exchange(true, ordering: .acquiringAndReleasing) { return }
        let loop = self.loop
        loop.execute({ [self] in loop.unregister(self) }, ifClosed: nil)
    }
}

/// The poll handle of one fd and its reader and writer slots. Loop thread only.
final class UVPoll {
    let handle: UnsafeMutablePointer<uv_poll_t>
    /// The file the fd named when the handle was made: a different one now means the fd was closed without
    /// `forget` and its number reused, and the handle (which epoll silently dropped) is stale.
    let identity: DescriptorIdentity
    var reader: UVWatch?
    var writer: UVWatch?
    /// The events currently passed to `uv_poll_start`.
    var armed: Int32 = 0

    init(handle: UnsafeMutablePointer<uv_poll_t>, identity: DescriptorIdentity) {
        self.handle = handle
        self.identity = identity
    }
}

private let readable = Int32(UV_READABLE.rawValue)
private let writable = Int32(UV_WRITABLE.rawValue)

extension UVLoop {
    /// Registers `watch`; loop thread only. Throws busy / badDescriptor.
    func register(_ watch: UVWatch) throws(RuntimeError) {
        if watch.isCancelled { return }
        let fd = watch.fd
        guard fd >= 0 else { throw RuntimeError(.badDescriptor, "fd \(fd) is not a valid file descriptor") }
        let poll = try pollEntry(for: fd)
        let wantsRead = watch.events.contains(.read)
        let wantsWrite = watch.events.contains(.write)
        if (wantsRead && poll.reader != nil) || (wantsWrite && poll.writer != nil) {
            throw RuntimeError(.busy, "another task is already waiting on fd \(fd) for \(watch.events)")
        }
        if wantsRead { poll.reader = watch }
        if wantsWrite { poll.writer = watch }
        // Lazy disarm: only widen here; narrowing happens when an event fires with nobody waiting, which
        // saves an epoll_ctl per wait in read-until-EAGAIN loops.
        var wanted = poll.armed
        if wantsRead { wanted |= readable }
        if wantsWrite { wanted |= writable }
        if wanted != poll.armed {
            let rc = uv_poll_start(poll.handle, wanted, uvPollCallback)
            if rc != 0 {
                if poll.reader === watch { poll.reader = nil }
                if poll.writer === watch { poll.writer = nil }
                throw RuntimeError(.badDescriptor, "cannot watch fd \(fd): \(String(cString: uv_strerror(rc)))")
            }
            poll.armed = wanted
        }
    }

    /// Withdraws `watch` from its slots, if it is still there. Loop thread only.
    func unregister(_ watch: UVWatch) {
        let fd = Int(watch.fd)
        guard fd >= 0, fd < polls.count, let poll = polls[fd] else { return }
        if poll.reader === watch { poll.reader = nil }
        if poll.writer === watch { poll.writer = nil }
    }

    private func pollEntry(for fd: Int32) throws(RuntimeError) -> UVPoll {
        // Validate before growing the fd-indexed table: a closed or absurd fd is an error, not an allocation.
        let identity = try DescriptorCheck.identity(of: fd)
        let index = Int(fd)
        if index >= polls.count { polls.append(contentsOf: repeatElement(nil, count: index - polls.count + 1)) }
        if let poll = polls[index] {
            if poll.identity == identity { return poll }
            // Closed without forget and reused: fail the stale waiters instead of leaving them forever.
            dropPoll(fd: fd, failingWith: DescriptorCheck.reusedError(fd))
        }
        // Checked before uv_poll_init, which would otherwise switch the fd to non-blocking mode itself: the
        // same fds are accepted on every backend.
        try DescriptorCheck.requireNonBlocking(fd)
        let handle = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        let rc = uv_poll_init(loop, handle, fd)
        guard rc == 0 else {
            handle.deallocate()
            throw RuntimeError(.badDescriptor, "cannot watch fd \(fd): \(String(cString: uv_strerror(rc)))")
        }
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let poll = UVPoll(handle: handle, identity: identity)
        polls[index] = poll
        watchedCount.add(1, ordering: .relaxed)
        return poll
    }

    /// libuv reported readiness (or an error) for a poll handle. Loop thread only.
    fileprivate func pollFired(_ handle: UnsafeMutablePointer<uv_poll_t>, status: Int32, events: Int32) {
        var fd: uv_os_fd_t = -1
        uv_fileno(UnsafeMutableRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self), &fd)
        guard fd >= 0, Int(fd) < polls.count, let poll = polls[Int(fd)], poll.handle == handle else { return }
        // An error (POLLERR, for example a reset connection) wakes everybody: their next read or write reports
        // the real error. libuv has stopped the handle itself before calling us with an error, so it is
        // disarmed now: the next wait must start it again, or it would wait on a stopped handle forever.
        let fired = status < 0 ? poll.armed : events
        if status < 0 { poll.armed = 0 }
        var stillWanted = poll.armed
        var woken: [(UVWatch, IOEvents)] = []
        if fired & readable != 0 {
            if let reader = poll.reader {
                poll.reader = nil
                if poll.writer === reader { poll.writer = nil }
                woken.append((reader, fired & writable != 0 ? [.read, .write] : .read))
            } else {
                stillWanted &= ~readable
            }
        }
        if fired & writable != 0 {
            if let writer = poll.writer {
                poll.writer = nil
                if poll.reader === writer { poll.reader = nil }
                woken.append((writer, .write))
            } else if !woken.contains(where: { $0.0.events.contains(.write) }) {
                stillWanted &= ~writable
            }
        }
        // Events nobody waits for get disarmed, or level-triggered epoll would spin.
        if stillWanted != poll.armed {
            poll.armed = stillWanted
            if stillWanted == 0 { uv_poll_stop(poll.handle) } else { uv_poll_start(poll.handle, stillWanted, uvPollCallback) }
        }
        for (watch, ready) in woken { watch.finish(.success(ready)) }
    }

    /// Fails the fd's watchers with `closed` and closes its poll handle. Loop thread only.
    func forgetOnLoop(fd: Int32) {
        dropPoll(fd: fd, failingWith: RuntimeError(.closed, "fd \(fd) was forgotten (about to be closed) while a task waited on it"))
    }

    /// Removes the fd's poll handle and fails its watchers with `closed`. Loop thread only.
    private func dropPoll(fd: Int32, failingWith closed: RuntimeError) {
        let index = Int(fd)
        guard index >= 0, index < polls.count, let poll = polls[index] else { return }
        polls[index] = nil
        watchedCount.subtract(1, ordering: .relaxed)
        let watchers = [poll.reader, poll.writer === poll.reader ? nil : poll.writer].compactMap { $0 }
        poll.reader = nil
        poll.writer = nil
        uv_poll_stop(poll.handle)
        uv_close(UnsafeMutableRawPointer(poll.handle).assumingMemoryBound(to: uv_handle_t.self)) { handle in
            handle?.deallocate()
        }
        for watch in watchers { watch.finish(.failure(closed)) }
    }
}

private let uvPollCallback: uv_poll_cb = { handle, status, events in
    guard let handle, let data = handle.pointee.data else { return }
    Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().pollFired(handle, status: status, events: events)
}
