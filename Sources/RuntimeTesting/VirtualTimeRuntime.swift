public import Runtime
import DequeModule
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A deterministic backend for tests: a virtual clock that jumps to the next deadline as soon as every
/// task is blocked (trio's autojump `MockClock`), so timeout logic takes no real time.
///
/// ```swift
/// try await VirtualTimeRuntime.run {
///     try await Runtime.sleep(for: .seconds(3600))     // returns at once, one virtual hour later
/// }
/// ```
///
/// Everything else is real: tasks run on a loop thread of their own, readiness waits use `poll(2)` on real
/// file descriptors, blocking work runs on real threads.
///
/// Blocking work and outside work (awaited through `Runtime.withCompletion`) take no virtual time: the clock
/// stands still until they finish, so a deadline never interrupts them here. Cancel such work explicitly
/// (`CancelScope.cancel()`) when a test needs to.
///
/// **When the clock jumps.** The loop is idle when no job is runnable. Then:
/// - while blocking work is in flight, or outside work awaited through `Runtime.withCompletion`, it waits for
///   that work (the clock stands still);
/// - it waits the autojump threshold of real time (trio's `MockClock.autojump_threshold`) and jumps to the
///   earliest timer only if nothing happened meanwhile;
/// - while file descriptors are watched (a real peer, such as a database server, may still answer), it
///   waits at least as long as the jump would move the clock, up to ``Configuration/ioQuietPeriod``: a
///   deadline 200 ms away passes after 200 ms of real silence, one 10 s away after 10 s (or the quiet
///   period, when shorter). Virtual time never outruns a silent peer by more than that period, so a busy
///   server is not mistaken for one that stopped answering, and a test waiting for a short deadline on a
///   silent server still takes only that deadline's real time;
/// - with ``Autojump/never`` it never jumps by itself: only ``jump(by:)`` moves the clock.
///
/// A task in `Runtime.waitAllTasksBlocked(cushion:)` is woken before the clock jumps, as in trio.
///
/// It is written against the public `RuntimeBackend` contract only, like a third-party backend would be.
public enum VirtualTimeRuntime {
    /// Tuning for one run.
    public struct Configuration: Sendable {
        /// When the idle loop jumps the clock (default ``Autojump/immediately``). Change it during a run with
        /// ``VirtualTimeRuntime/setAutojump(_:)``.
        public var autojump = Autojump.immediately
        /// The most real time the loop waits for IO before it lets the virtual clock jump while fds are
        /// watched (default 250 ms); a jump shorter than this waits as long as the jump. It bounds how long a
        /// real peer — a database server — may stay silent before virtual deadlines pass: raise it for slow
        /// peers or loaded machines (up to the longest deadline, virtual time then keeps pace with real time
        /// whenever a peer is silent), lower it for tests that only talk to themselves.
        public var ioQuietPeriod: Duration = .milliseconds(250)
        /// The virtual clock's reading at the start (default 1,000 s: arithmetic below zero stays valid).
        public var start = RuntimeInstant(nanoseconds: 1_000_000_000_000)
        /// The size of `Runtime.defaultBlockingLimiter`.
        public var blockingTokens = 40

        public init() {}
    }

    /// Runs `body` on a new virtual-time runtime driven by the calling thread.
    public static func run<T: Sendable>(
        configuration: Configuration = Configuration(),
        _ body: @escaping @Sendable () async throws -> T
    ) throws -> T {
        let backend = VirtualTimeBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        backend.adoptCurrentThread()
        let root = RootTask(runtime: runtime, body) { backend.stop() }
        backend.drive()
        backend.close()
        return try root.result()
    }

    /// Runs `body` on a new virtual-time runtime with a loop thread of its own.
    public static func run<T>(
        configuration: Configuration = Configuration(),
        isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws -> T
    ) async throws -> T {
        let backend = VirtualTimeBackend(configuration: configuration)
        let runtime = try Runtime(backend: backend, blockingTokens: configuration.blockingTokens)
        try backend.startThread()
        return try await runtime.enter(isolation: isolation, body, afterwards: { await backend.stopThread() })
    }

    /// Moves the current virtual-time runtime's clock forward by `duration` and runs the timers that became
    /// due (trio's `MockClock.jump`).
    ///
    /// - Throws: `RuntimeError.Code.invalidArgument` when the current runtime is not a virtual-time one, or
    ///   `duration` is negative (time does not go backwards).
    public static func jump(by duration: Duration) throws(RuntimeError) {
        guard duration >= .zero else {
            throw RuntimeError(.invalidArgument, "VirtualTimeRuntime.jump: duration must be >= 0 (time can't go backwards), got \(duration)")
        }
        try currentBackend("jump").jump(by: duration)
    }

    /// Changes when the current virtual-time runtime's idle loop jumps the clock; takes effect at once, also
    /// while the loop is idle.
    ///
    /// - Throws: `RuntimeError.Code.invalidArgument` when the current runtime is not a virtual-time one.
    public static func setAutojump(_ autojump: Autojump) throws(RuntimeError) {
        try currentBackend("setAutojump").setAutojump(autojump)
    }

    private static func currentBackend(_ api: String) throws(RuntimeError) -> VirtualTimeBackend {
        guard let backend = try Runtime.current.backend as? VirtualTimeBackend else {
            throw RuntimeError(.invalidArgument, "VirtualTimeRuntime.\(api) needs a virtual-time runtime")
        }
        return backend
    }
}

/// The virtual-time `RuntimeBackend`.
final class VirtualTimeBackend: RuntimeBackend, OutsideWorkTracking, @unchecked Sendable {
    // @unchecked Sendable: `local`, `spare` and `stopRequested` are confined to the loop thread (the one
    // that called adoptCurrentThread / runs drive and close); everything else is a lock (`Locked`), an atomic, or
    // immutable.

    enum Work: Sendable {
        case job(UnownedJob)
        case closure(@Sendable () -> Void)
    }

    private struct Shared: Sendable {
        var remote = Deque<Work>()
        var readers: [Int32: ReadinessWatch] = [:]
        var writers: [Int32: ReadinessWatch] = [:]
        var closed = false
    }

    private let shared = Locked(Shared())
    private let timers = Locked(TimerQueue())
    private let virtualNow: Atomic<Int64>
    private let pool = BlockingThreadPool(maximumThreads: 64)
    private let blockingInFlight = Atomic<Int>(0)
    private let wakeFD: Int32
    private let wakeWriteFD: Int32
    private let threadID = Atomic<UInt>(0)
    private let hasThread = Atomic<Bool>(false)
    private let closedFlag = Atomic<Bool>(false)
    private let thread = Locked<LoopThread?>(nil)
    private let quietMilliseconds: Int32
    private let autojumpMilliseconds: Atomic<Int32>
    private let executorObject: VirtualExecutor

    // Loop thread only.
    private var local: [Work] = []
    private var spare: [Work] = []
    private var stopRequested = false

    init(configuration: VirtualTimeRuntime.Configuration) {
        virtualNow = Atomic(configuration.start.nanoseconds)
        quietMilliseconds = Int32(clamping: max(0, configuration.ioQuietPeriod.saturatingNanoseconds / 1_000_000))
        autojumpMilliseconds = Atomic(configuration.autojump.milliseconds)
        // A pipe wakes the loop from poll(2); failing to get one means the process is out of fds.
        var ends: [Int32] = [-1, -1]
        let rc = pipe(&ends)
        precondition(rc == 0, "pipe failed: errno \(errno)")
        for end in ends {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        wakeFD = ends[0]
        wakeWriteFD = ends[1]
        executorObject = VirtualExecutor()
        executorObject.attach(self)
    }

    var name: String { "virtual" }
    var executor: any TaskExecutor { executorObject }
    var isOnExecutor: Bool {
        hasThread.load(ordering: .acquiring) && pthread_equal(pthread_self(), pthread_t(threadID.load(ordering: .relaxed))) != 0
    }

    func now() -> RuntimeInstant { RuntimeInstant(nanoseconds: virtualNow.load(ordering: .acquiring)) }

    // MARK: Work

    func adoptCurrentThread() {
        threadID.store(UInt(pthread_self()), ordering: .relaxed)
        hasThread.store(true, ordering: .releasing)
    }

    func submit(_ work: Work) {
        if isOnExecutor && !closedFlag.load(ordering: .acquiring) {
            local.append(work)
            return
        }
        let accepted = shared.withLock { shared -> Bool in
            if shared.closed { return false }
            shared.remote.append(work)
            if shared.remote.count == 1 { wakeLocked() }
            return true
        }
        if !accepted { Self.runAfterClose(work) }
    }

    /// Work for a backend that has closed (a task that outlived its run): jobs go to the global executor;
    /// closures are the backend's own and only resume tasks, so they run here.
    private static func runAfterClose(_ work: Work) {
        switch work {
        case .job(let job): globalConcurrentExecutor.enqueue(ExecutorJob(job))
        case .closure(let closure): closure()
        }
    }

    /// Wakes the loop from poll(2). Takes the lock: close() closes the pipe under it.
    private func wake() { shared.withLock { if !$0.closed { wakeLocked() } } }

    private func wakeLocked() {
        var one: UInt8 = 1
        _ = write(wakeWriteFD, &one, 1)  // a full pipe (EAGAIN) already means "wake up"
    }

    private var isClosed: Bool { closedFlag.load(ordering: .acquiring) }

    func stop() { submit(.closure { [self] in stopRequested = true }) }

    // MARK: Timers

    func scheduleTimer(at deadline: RuntimeInstant, _ fire: @escaping @Sendable () -> Void) -> any BackendRegistration {
        let entry = TimerQueue.Entry(deadline: deadline, fire: fire)
        guard !isClosed else {
            // The run has ended: a task that outlived it is not left sleeping forever (fired on another
            // thread, never inside this call).
            LateCallbacks.deliver { if !entry.isCancelled { entry.fire() } }
            return VirtualTimer(entry: entry, backend: self)
        }
        timers.withLock { _ = $0.insert(entry) }
        if !isOnExecutor { wake() }
        return VirtualTimer(entry: entry, backend: self)
    }

    func removeTimer(_ entry: TimerQueue.Entry) {
        timers.withLock { _ = $0.remove(entry) }
    }

    /// Fires the timers due at the current virtual time; returns how many fired.
    private func fireDueTimers() -> Int {
        let due = timers.withLock { $0.popDue(now: now()) }
        var fired = 0
        for entry in due where !entry.isCancelled {
            entry.fire()
            fired += 1
        }
        return fired
    }

    func setAutojump(_ autojump: Autojump) {
        autojumpMilliseconds.store(autojump.milliseconds, ordering: .relaxed)
        wake()  // an idle loop re-reads it
    }

    typealias Autojump = VirtualTimeRuntime.Autojump

    func jump(by duration: Duration) {
        let step = max(0, duration.saturatingNanoseconds)
        var current = virtualNow.load(ordering: .acquiring)
        while true {
            let (sum, overflow) = current.addingReportingOverflow(step)
            let (exchanged, original) = virtualNow.compareExchange(
                expected: current, desired: overflow ? .max : sum, ordering: .acquiringAndReleasing)
            if exchanged { break }
            current = original
        }
        submit(.closure { [self] in _ = fireDueTimers() })
    }

    // MARK: Readiness

    func watch(
        fd: Int32,
        for events: IOEvents,
        _ ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void
    ) throws(RuntimeError) -> any BackendRegistration {
        let identity = try DescriptorCheck.validate(fd)
        let watch = ReadinessWatch(fd: fd, events: events, identity: identity, ready: ready) { [weak self] in
            self?.unregister($0)
        }
        let stale = try shared.withLock { shared throws(RuntimeError) -> [ReadinessWatch] in
            if shared.closed { throw RuntimeError(.closed, "the runtime has ended; this task outlived it") }
            // A waiter on a file that is gone: its fd was closed without forget and the number reused.
            var stale: [ReadinessWatch] = []
            for direction in [\Shared.readers, \Shared.writers] {
                if let old = shared[keyPath: direction][fd], old.identity != identity {
                    shared.readers[fd] = shared.readers[fd] === old ? nil : shared.readers[fd]
                    shared.writers[fd] = shared.writers[fd] === old ? nil : shared.writers[fd]
                    stale.append(old)
                }
            }
            if (events.contains(.read) && shared.readers[fd] != nil)
                || (events.contains(.write) && shared.writers[fd] != nil)
            {
                throw RuntimeError(.busy, "another task is already waiting on fd \(fd) for \(events)")
            }
            if events.contains(.read) { shared.readers[fd] = watch }
            if events.contains(.write) { shared.writers[fd] = watch }
            return stale
        }
        for old in stale { old.finish(.failure(DescriptorCheck.reusedError(fd))) }
        if !isOnExecutor { wake() }
        return watch
    }

    func unregister(_ watch: ReadinessWatch) {
        shared.withLock { shared in
            if shared.readers[watch.fd] === watch { shared.readers[watch.fd] = nil }
            if shared.writers[watch.fd] === watch { shared.writers[watch.fd] = nil }
        }
    }

    func forget(fd: Int32) async {
        let watches = shared.withLock { shared -> [ReadinessWatch] in
            let watches = [shared.readers[fd], shared.writers[fd]].compactMap { $0 }
            shared.readers[fd] = nil
            shared.writers[fd] = nil
            return watches
        }
        let closed = RuntimeError(.closed, "fd \(fd) was forgotten (about to be closed) while a task waited on it")
        for watch in watches { watch.finish(.failure(closed)) }
    }

    // MARK: Blocking work

    func runBlocking(_ work: @escaping @Sendable () -> Void) {
        blockingInFlight.add(1, ordering: .relaxed)
        pool.submit { [self] in
            work()
            blockingInFlight.subtract(1, ordering: .releasing)
            wake()  // the clock may move again
        }
    }

    // Outside work (a thread the runtime does not own, awaited through Runtime.withCompletion) holds the
    // clock still exactly like blocking work does.
    func outsideWorkStarted() { blockingInFlight.add(1, ordering: .relaxed) }

    func outsideWorkFinished() {
        blockingInFlight.subtract(1, ordering: .releasing)
        wake()
    }

    func diagnostics() -> RuntimeDiagnostics {
        let watched = shared.withLock { Set($0.readers.keys).union($0.writers.keys).count }
        let threadAlive = thread.withLock { $0 != nil }
        return RuntimeDiagnostics(
            pendingTimers: timers.withLock { $0.count },
            watchedDescriptors: watched,
            blockingJobsInFlight: blockingInFlight.load(ordering: .relaxed),
            ownedThreads: pool.threadCount + (threadAlive ? 1 : 0),
            isClosed: closedFlag.load(ordering: .acquiring))
    }

    // MARK: Driving

    func drive() {
        while true {
            let incoming = shared.withLock { shared -> Deque<Work> in
                defer { shared.remote.removeAll() }
                return shared.remote
            }
            local.append(contentsOf: incoming)
            if stopRequested && local.isEmpty { return }
            if !local.isEmpty {
                runBatch()
                pollIO(timeout: 0)
                continue
            }
            if fireDueTimers() > 0 { continue }
            // Idle: every task is blocked.
            let watching = shared.withLock { !$0.readers.isEmpty || !$0.writers.isEmpty }
            let nextTimer = timers.withLock { $0.nextDeadline }.flatMap { $0.isNever ? nil : $0 }
            let threshold = autojumpMilliseconds.load(ordering: .relaxed)
            let timeout: Int32
            if blockingInFlight.load(ordering: .acquiring) > 0 || nextTimer == nil || threshold < 0 {
                timeout = -1  // the work's completion, a jump, new work or readiness wakes us
            } else {
                // While a real peer may answer, the jump waits as long as it would move the clock (up to the
                // quiet period): a busy server gets the real time its deadline gives it.
                let (difference, overflow) = (nextTimer?.nanoseconds ?? Int64.max).subtractingReportingOverflow(virtualNow.load(ordering: .acquiring))
                let distance = overflow ? Int64.max : difference
                let jumpMilliseconds = Int32(clamping: max(0, distance / 1_000_000 + (distance % 1_000_000 == 0 ? 0 : 1)))
                timeout = watching ? max(threshold, min(quietMilliseconds, jumpMilliseconds)) : threshold
            }
            if pollIO(timeout: timeout) { continue }
            if blockingInFlight.load(ordering: .acquiring) == 0, let nextTimer, threshold >= 0,
                shared.withLock({ $0.remote.isEmpty })
            {
                // Autojump: nothing can happen before the next deadline.
                let current = virtualNow.load(ordering: .acquiring)
                if nextTimer.nanoseconds > current { virtualNow.store(nextTimer.nanoseconds, ordering: .releasing) }
            }
        }
    }

    /// Polls the wake fd and the watched fds; delivers readiness. Returns whether anything happened.
    @discardableResult
    private func pollIO(timeout: Int32) -> Bool {
        var fds = [pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)]
        shared.withLock { shared in
            var wanted: [Int32: Int16] = [:]
            for fd in shared.readers.keys { wanted[fd, default: 0] |= Int16(POLLIN) }
            for fd in shared.writers.keys { wanted[fd, default: 0] |= Int16(POLLOUT) }
            for (fd, events) in wanted { fds.append(pollfd(fd: fd, events: events, revents: 0)) }
        }
        let count = poll(&fds, nfds_t(fds.count), timeout)
        if count < 0 { return errno == EINTR }  // interrupted: not a quiet period, so no autojump
        guard count > 0 else { return false }
        if fds[0].revents != 0 {
            var buffer = [UInt8](repeating: 0, count: 64)
            while read(wakeFD, &buffer, buffer.count) > 0 {}
        }
        var woken: [(ReadinessWatch, IOEvents)] = []
        shared.withLock { shared in
            for entry in fds.dropFirst() where entry.revents != 0 {
                let failed = entry.revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0
                if entry.revents & Int16(POLLIN) != 0 || failed, let reader = shared.readers[entry.fd] {
                    shared.readers[entry.fd] = nil
                    if shared.writers[entry.fd] === reader { shared.writers[entry.fd] = nil }
                    woken.append((reader, .read))
                }
                if entry.revents & Int16(POLLOUT) != 0 || failed, let writer = shared.writers[entry.fd] {
                    shared.writers[entry.fd] = nil
                    if shared.readers[entry.fd] === writer { shared.readers[entry.fd] = nil }
                    woken.append((writer, .write))
                }
            }
        }
        for (watch, events) in woken { watch.finish(.success(events)) }
        return true
    }

    private func runBatch() {
        var batch = spare
        swap(&batch, &local)
        let executor = executorObject.asUnownedTaskExecutor()
        for work in batch {
            switch work {
            case .job(let job): job.runSynchronously(on: executor)
            case .closure(let closure): closure()
            }
        }
        batch.removeAll(keepingCapacity: true)
        spare = batch
    }

    /// Ends the run after ``drive()`` returned. Loop thread only.
    func close() {
        pool.shutdown()
        while true {
            let incoming = shared.withLock { shared -> Deque<Work> in
                defer { shared.remote.removeAll() }
                return shared.remote
            }
            local.append(contentsOf: incoming)
            if local.isEmpty { break }
            runBatch()
        }
        // Closed, drained and the wake pipe shut in one critical section: later work goes to runAfterClose.
        let (leftovers, watches) = shared.withLock { shared -> (Deque<Work>, [ReadinessWatch]) in
            shared.closed = true
            closedFlag.store(true, ordering: .releasing)
            defer {
                shared.remote.removeAll()
                shared.readers.removeAll()
                shared.writers.removeAll()
                Glibc.close(wakeFD)
                Glibc.close(wakeWriteFD)
            }
            return (shared.remote, Array(shared.readers.values) + Array(shared.writers.values))
        }
        for work in leftovers { Self.runAfterClose(work) }
        let closed = RuntimeError(.closed, "the runtime ended while a task waited on fd readiness")
        for watch in watches { watch.finish(.failure(closed)) }
        // A task that outlived the run: its sleeps end now instead of never.
        for entry in timers.withLock({ $0.removeAll() }) where !entry.isCancelled { entry.fire() }
        hasThread.store(false, ordering: .releasing)
    }

    // MARK: Own thread

    func startThread() throws(RuntimeError) {
        let thread = try LoopThread.start(prepare: { [self] in adoptCurrentThread() }) { [self] in
            drive()
            close()
        }
        self.thread.withLock { $0 = thread }
    }

    func stopThread() async {
        stop()
        guard let thread = thread.withLock({ $0 }) else { return }
        await thread.join()
        self.thread.withLock { $0 = nil }
    }
}
