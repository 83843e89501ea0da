#if NIO
import CEpoll
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Descriptor readiness for the NIO backend: an epoll set and one thread of the backend's own waiting on it.
///
/// SwiftNIO has no public way to learn that a descriptor is readable without taking it over (its pipe and
/// socket channels read the data themselves, and libpq must do its own reads), so this thread watches the
/// descriptors and hands each event to the runtime: the `ready` callback resumes the waiting task, whose job
/// then runs on the event loop. That hop costs a thread wake-up per event (see the benchmarks' NIO rows).
///
/// Every registration is `EPOLLONESHOT`: an event disarms the descriptor until someone waits again, so a
/// level-triggered condition nobody waits for never spins the thread. Each registration carries the
/// descriptor's generation, so an event fetched just before a `forget` (or for a number since reused) is
/// recognised and dropped.
final class EpollReadiness: Sendable {
    private struct Entry {
        var identity: DescriptorIdentity
        var generation: UInt32
        var reader: ReadinessWatch?
        var writer: ReadinessWatch?
        /// Whether the descriptor is in the epoll set (added once, then modified).
        var added = false
    }

    private enum ThreadState {
        case none
        /// A registration is starting it, outside the lock.
        case starting
        case running(LoopThread)
    }

    private struct State: ~Copyable {
        var entries: [Int32: Entry] = [:]
        var nextGeneration: UInt32 = 1
        /// Started by the first registration: a run that never waits on a descriptor has no thread.
        var thread = ThreadState.none
        var closed = false
    }

    private let epoll: Int32
    /// An eventfd that wakes the thread to stop.
    private let wake: Int32
    private let state: Locked<State>
    private let stopping = Atomic<Bool>(false)

    init() throws(RuntimeError) {
        let epoll = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epoll >= 0 else { throw RuntimeError(.backendFailure, "epoll_create1 failed: errno \(errno)") }
        let wake = eventfd(0, Int32(EFD_CLOEXEC) | Int32(EFD_NONBLOCK))
        guard wake >= 0 else {
            Glibc.close(epoll)
            throw RuntimeError(.backendFailure, "eventfd failed: errno \(errno)")
        }
        var event = epoll_event()
        event.events = EPOLLIN.rawValue
        event.data.u64 = UInt64.max
        guard epoll_ctl(epoll, EPOLL_CTL_ADD, wake, &event) == 0 else {
            Glibc.close(wake)
            Glibc.close(epoll)
            throw RuntimeError(.backendFailure, "epoll_ctl on the wake-up eventfd failed: errno \(errno)")
        }
        self.epoll = epoll
        self.wake = wake
        self.state = Locked(State())
    }

    deinit {
        Glibc.close(wake)
        Glibc.close(epoll)
    }

    /// Descriptors with a registration.
    var watchedDescriptors: Int { state.withLock { $0.entries.count } }

    /// Whether the readiness thread is running.
    var threadCount: Int {
        state.withLock { state in
            switch state.thread {
            case .none: 0
            case .starting: 1
            case .running(let thread): thread.isAlive ? 1 : 0
            }
        }
    }

    func register(_ watch: ReadinessWatch) throws(RuntimeError) {
        let fd = watch.fd
        let identity = try DescriptorCheck.identity(of: fd)
        let (stale, needsThread) = try state.withLock { state throws(RuntimeError) -> (Entry?, Bool) in
            guard !state.closed else { throw RuntimeError(.closed, "the runtime has ended; this task outlived it") }
            var stale: Entry?
            if let old = state.entries[fd], old.identity != identity {
                // Closed without forget and reused: the old registration went with the old file (or lingers
                // under an old generation, whose events are dropped). Start afresh.
                stale = old
                state.entries[fd] = nil
                _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil)
            }
            if state.entries[fd] == nil {
                try DescriptorCheck.requireNonBlocking(fd)
                state.entries[fd] = Entry(identity: identity, generation: state.nextGeneration)
                state.nextGeneration &+= 1
            }
            guard var entry = state.entries[fd] else { throw RuntimeError(.badDescriptor, "fd \(fd) vanished") }
            let wantsRead = watch.events.contains(.read)
            let wantsWrite = watch.events.contains(.write)
            if (wantsRead && entry.reader != nil) || (wantsWrite && entry.writer != nil) {
                throw RuntimeError(.busy, "another task is already waiting on fd \(fd) for \(watch.events)")
            }
            if wantsRead { entry.reader = watch }
            if wantsWrite { entry.writer = watch }
            do throws(RuntimeError) {
                try arm(fd, &entry)
            } catch {
                if wantsRead { entry.reader = nil }
                if wantsWrite { entry.writer = nil }
                state.entries[fd] = entry.added ? entry : nil
                throw error
            }
            state.entries[fd] = entry
            guard case .none = state.thread else { return (stale, false) }
            state.thread = .starting
            return (stale, true)
        }
        if let stale {
            let error = DescriptorCheck.reusedError(fd)
            stale.reader?.finish(.failure(error))
            if stale.writer !== stale.reader { stale.writer?.finish(.failure(error)) }
        }
        if needsThread { try startThread(for: watch) }
    }

    /// Arms `entry`'s registration for the directions somebody waits for. Under the state lock.
    private func arm(_ fd: Int32, _ entry: inout Entry) throws(RuntimeError) {
        // EPOLLRDHUP only with a reader: a half-closed peer keeps it set, and armed for a writer alone it
        // would fire again at once after every re-arm, spinning the thread until the writer woke.
        var interest: UInt32 = EPOLLONESHOT.rawValue
        if entry.reader != nil { interest |= EPOLLIN.rawValue | EPOLLRDHUP.rawValue }
        if entry.writer != nil { interest |= EPOLLOUT.rawValue }
        var event = epoll_event()
        event.events = interest
        event.data.u64 = UInt64(UInt32(bitPattern: fd)) << 32 | UInt64(entry.generation)
        if entry.added {
            if epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) == 0 { return }
            guard errno == ENOENT else { throw Self.refused(fd) }
        }
        if epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) != 0 {
            guard errno == EEXIST, epoll_ctl(epoll, EPOLL_CTL_MOD, fd, &event) == 0 else { throw Self.refused(fd) }
        }
        entry.added = true
    }

    private static func refused(_ fd: Int32) -> RuntimeError {
        let code = errno
        return RuntimeError(.badDescriptor, "epoll refuses fd \(fd) (errno \(code)\(code == EPERM ? ": a regular file or a directory cannot be watched" : ""))")
    }

    /// Starts the readiness thread (the caller set `.starting`). If no thread can be made, the watches
    /// registered meanwhile are failed (nothing would ever deliver their events) and their slots freed; the
    /// caller's own watch learns it from the error thrown, never through `ready` inside `watch`.
    private func startThread(for current: ReadinessWatch) throws(RuntimeError) {
        do throws(RuntimeError) {
            let thread = try LoopThread.start(prepare: {}, body: { [self] in self.runLoop() })
            state.withLock { $0.thread = .running(thread) }
        } catch {
            let stranded = state.withLock { state -> [ReadinessWatch] in
                state.thread = .none
                var stranded: [ReadinessWatch] = []
                for (fd, var entry) in state.entries {
                    for watch in [entry.reader, entry.writer].compactMap({ $0 }) where watch !== current
                        && !stranded.contains(where: { $0 === watch })
                    {
                        stranded.append(watch)
                    }
                    entry.reader = nil
                    entry.writer = nil
                    state.entries[fd] = entry
                }
                return stranded
            }
            for watch in stranded { watch.finish(.failure(error)) }
            throw error
        }
    }

    /// The thread's loop: waits for events and delivers them, until ``close()``.
    private func runLoop() {
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while !stopping.load(ordering: .acquiring) {
            let count = events.withUnsafeMutableBufferPointer { buffer in
                epoll_wait(epoll, buffer.baseAddress, Int32(buffer.count), -1)
            }
            if count < 0 { continue }  // EINTR
            for index in 0..<Int(count) {
                let event = events[index]
                let data = event.data.u64
                if data == UInt64.max {
                    var value: UInt64 = 0
                    _ = read(wake, &value, 8)
                    continue
                }
                deliver(fd: Int32(bitPattern: UInt32(truncatingIfNeeded: data >> 32)),
                        generation: UInt32(truncatingIfNeeded: data), events: event.events)
            }
        }
    }

    private func deliver(fd: Int32, generation: UInt32, events: UInt32) {
        let failure = EPOLLERR.rawValue | EPOLLHUP.rawValue
        let readable = events & (EPOLLIN.rawValue | EPOLLRDHUP.rawValue | failure) != 0
        let writable = events & (EPOLLOUT.rawValue | failure) != 0
        let woken = state.withLock { state -> [(ReadinessWatch, IOEvents)] in
            guard var entry = state.entries[fd], entry.generation == generation else { return [] }
            var woken: [(ReadinessWatch, IOEvents)] = []
            var ready: IOEvents = []
            if readable { ready.insert(.read) }
            if writable { ready.insert(.write) }
            // An error or a hang-up counts as every requested event: the next read or write reports it.
            let all = events & failure != 0
            if let reader = entry.reader, readable {
                woken.append((reader, all ? reader.events : ready.intersection(reader.events)))
                entry.reader = nil
                if entry.writer === reader { entry.writer = nil }
            }
            if let writer = entry.writer, writable {
                woken.append((writer, all ? writer.events : ready.intersection(writer.events)))
                entry.writer = nil
                if entry.reader === writer { entry.reader = nil }
            }
            // The registration is disarmed (one-shot): arm it again for those still waiting.
            if entry.reader != nil || entry.writer != nil {
                do throws(RuntimeError) {
                    try arm(fd, &entry)
                } catch {
                    if let reader = entry.reader { woken.append((reader, reader.events)) }
                    if let writer = entry.writer, writer !== entry.reader { woken.append((writer, writer.events)) }
                    entry.reader = nil
                    entry.writer = nil
                }
            }
            state.entries[fd] = entry
            return woken
        }
        for (watch, ready) in woken { watch.finish(.success(ready)) }
    }

    /// A watch cancelled before its event: its slots are free again. The registration stays armed; an event
    /// that finds nobody waiting is dropped, and leaves it disarmed.
    func unregister(_ watch: ReadinessWatch) {
        state.withLock { state in
            guard var entry = state.entries[watch.fd] else { return }
            if entry.reader === watch { entry.reader = nil }
            if entry.writer === watch { entry.writer = nil }
            state.entries[watch.fd] = entry
        }
    }

    /// Drops the registration of `fd` and fails its watchers with `closed`. Once it returns the thread will not
    /// touch `fd` again: an event already fetched carries a generation nobody has any more.
    func forget(fd: Int32) {
        guard let entry = state.withLock({ state -> Entry? in
            guard let entry = state.entries.removeValue(forKey: fd) else { return nil }
            if entry.added { _ = epoll_ctl(epoll, EPOLL_CTL_DEL, fd, nil) }
            return entry
        }) else { return }
        let closed = RuntimeError(.closed, "fd \(fd) was forgotten (about to be closed) while a task waited on it")
        entry.reader?.finish(.failure(closed))
        if entry.writer !== entry.reader { entry.writer?.finish(.failure(closed)) }
    }

    /// Forgets every descriptor, refuses new watches, stops the thread and waits for it to end.
    func close() async {
        let fds = state.withLock { state -> [Int32] in
            state.closed = true
            return Array(state.entries.keys)
        }
        for fd in fds { forget(fd: fd) }
        // A registration may be starting the thread right now (for microseconds): wait until it is there.
        var thread: LoopThread?
        while true {
            let current = state.withLock { state -> ThreadState in state.thread }
            if case .starting = current {
                sched_yield()
                continue
            }
            if case .running(let running) = current { thread = running }
            break
        }
        guard let thread else { return }
        stopping.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = write(wake, &one, 8)
        await thread.join()
        state.withLock { $0.thread = .none }
    }
}
#endif
