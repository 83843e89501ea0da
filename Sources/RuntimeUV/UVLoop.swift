import CLibUV
import DequeModule
import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One libuv loop and the thread that drives it: the executor, the timer heap and the poll registry.
///
/// Threading: everything marked "loop thread only" is touched exclusively by the thread running ``drive()``
/// (and, after it returned, by ``close()`` on that same thread). Other threads reach the loop only through
/// ``submit(_:)``, which takes the `remote` mutex and wakes the loop with `uv_async_send`.
final class UVLoop: @unchecked Sendable {
    // @unchecked Sendable: the unsynchronized fields are confined to the loop thread (see above); the
    // remaining ones are a lock (`Locked`), atomics, immutable lets, or C handles used only on the loop thread
    // (uv_async_send, the one exception, is documented by libuv as thread-safe).

    enum Work: @unchecked Sendable {
        // @unchecked: UnownedJob is Sendable; the closure is @Sendable. (The enum is spelled out only because
        // the checker cannot see through `UnownedJob` inside an indirect payload on this toolchain.)
        case job(UnownedJob)
        /// Loop-thread-only work, and what to do instead if the loop has closed before it could run.
        case closure(@Sendable () -> Void, ifClosed: (@Sendable () -> Void)?)
    }

    let loop: UnsafeMutablePointer<uv_loop_t>
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let timerHandle: UnsafeMutablePointer<uv_timer_t>
    /// A timerfd polled by the loop (Linux): timers to the nanosecond, where libuv's own timers round up to
    /// the next millisecond (0.7 ms late at the median in RT-TIMERS). -1: libuv's timer is used instead.
    private let timerFD: Int32
    private let timerPoll: UnsafeMutablePointer<uv_poll_t>

    private let remote = Locked<[Work]>([])
    private let threadID = Atomic<UInt>(0)
    private let hasThread = Atomic<Bool>(false)
    private let closedFlag = Atomic<Bool>(false)
    private let pendingTimerCount = Atomic<Int>(0)
    let watchedCount = Atomic<Int>(0)
    let jobsBetweenPolls: Int
    /// Whether `remote` has work (written under its lock, read without it by the spinning loop thread).
    private let remotePending = Atomic<Bool>(false)
    /// Work on other threads whose result a task here waits for (blocking closures, `Runtime.withCompletion`
    /// calls): while there is some, the loop spins briefly before it sleeps (see ``spinForRemoteWork()``).
    let outsideWork = Atomic<Int>(0)

    // Loop thread only.
    private var local = Deque<Work>()
    /// Work queued while due timers fire: it runs before `local` (a task whose deadline passed does not wait
    /// behind every task that was merely runnable — RT-TIMERS' lateness).
    private var urgent: [Work] = []
    private var firingTimers = false
    private var stopRequested = false
    /// Whether the loop thread is inside `uv_run` (callbacks are running).
    private var insideUVRun = false
    private var timers = TimerQueue()
    var polls: [UVPoll?] = []
    private(set) var loopCloseResult: Int32 = 0

    /// The executor tasks of this loop prefer, as jobs need it. Not retained: the executor owns the loop
    /// (tasks that prefer it keep both alive), and the backend holds the executor for the length of the run.
    /// Set once by ``attach(_:)`` before the loop runs.
    private var executor: UnownedTaskExecutor?

    init(jobsBetweenPolls: Int) {
        self.jobsBetweenPolls = max(1, jobsBetweenPolls)
        loop = .allocate(capacity: 1)
        wakeup = .allocate(capacity: 1)
        timerHandle = .allocate(capacity: 1)
        // uv_loop_init and handle inits fail only on resource exhaustion (no fds for epoll/eventfd).
        let rc = uv_loop_init(loop)
        precondition(rc == 0, "uv_loop_init failed: \(String(cString: uv_strerror(rc)))")
        uv_async_init(loop, wakeup) { _ in /* wakes uv_run; the work is drained by drive() */ }
        uv_timer_init(loop, timerHandle)
        timerPoll = .allocate(capacity: 1)
        timerFD = Self.startTimerFD(loop, timerPoll)  // its callback runs only inside uv_run
        let me = Unmanaged.passUnretained(self).toOpaque()
        loop.pointee.data = me
        timerHandle.pointee.data = me
        timerPoll.pointee.data = me
    }

    /// Records the executor that owns this loop; called once by it, before anything runs.
    func attach(_ executor: UVExecutor) { self.executor = executor.asUnownedTaskExecutor() }

    // MARK: Threads

    /// Whether the caller runs on the loop thread.
    @inline(__always) var isOnLoopThread: Bool {
        hasThread.load(ordering: .acquiring) && pthread_equal(pthread_self(), pthread_t(threadID.load(ordering: .relaxed))) != 0
    }

    var isClosed: Bool { closedFlag.load(ordering: .acquiring) }

    /// Makes the calling thread the loop thread. Call before ``drive()``, on the thread that will drive.
    func adoptCurrentThread() {
        threadID.store(UInt(pthread_self()), ordering: .relaxed)
        hasThread.store(true, ordering: .releasing)
    }

    // MARK: Submitting work

    /// Queues work for the loop thread. On the loop thread: a plain append. Elsewhere: the remote queue and,
    /// on its empty → non-empty transition only, one `uv_async_send`. After close: runs it elsewhere.
    func submit(_ work: Work) {
        if isOnLoopThread && !isClosed {
            if firingTimers { urgent.append(work) } else { local.append(work) }
            // Queued from a libuv callback: make uv_run return instead of blocking in epoll. In UV_RUN_ONCE
            // libuv runs due timers *before* it polls, so without this a task woken by a timer would sit in
            // `local` while the loop sleeps.
            if insideUVRun { uv_stop(loop) }
            return
        }
        let accepted = remote.withLock { queue -> Bool in
            if closedFlag.load(ordering: .acquiring) { return false }
            queue.append(work)
            // Sent under the lock: close() frees the async handle only after taking this lock.
            if queue.count == 1 {
                remotePending.store(true, ordering: .releasing)
                uv_async_send(wakeup)
            }
            return true
        }
        if !accepted { Self.runAfterClose(work) }
    }

    /// Work that arrives after the loop closed (a task that outlived its runtime): jobs continue on Swift's
    /// global executor, loop-only closures run their closed fallback. Nothing is lost and nothing touches the
    /// closed loop.
    private static func runAfterClose(_ work: Work) {
        switch work {
        case .job(let job): globalConcurrentExecutor.enqueue(ExecutorJob(job))
        case .closure(_, let ifClosed): ifClosed?()
        }
    }

    /// Runs `body` on the loop thread: inline when already there, else queued; `ifClosed` instead once the
    /// loop has closed.
    func execute(_ body: @escaping @Sendable () -> Void, ifClosed: (@Sendable () -> Void)? = nil) {
        if isOnLoopThread && !isClosed {
            body()
        } else {
            submit(.closure(body, ifClosed: ifClosed))
        }
    }

    /// Asks ``drive()`` to return once the queued work has run. Safe from any thread.
    func stop() {
        submit(.closure({ [self] in stopRequested = true }, ifClosed: nil))
    }

    // MARK: Driving

    /// Runs jobs and polls libuv until ``stop()``. Loop thread only.
    func drive() {
        precondition(isOnLoopThread, "UVLoop.drive() must run on the adopted thread")
        while true {
            takeRemoteWork()
            if stopRequested && !hasRunnableWork { return }
            if !hasRunnableWork && outsideWork.load(ordering: .relaxed) > 0 { spinForRemoteWork() }
            // Block in epoll only when nothing is runnable.
            insideUVRun = true
            uv_run(loop, hasRunnableWork ? UV_RUN_NOWAIT : UV_RUN_ONCE)
            insideUVRun = false
            // Up to `jobsBetweenPolls` jobs before polling IO and timers again: polling after every job would
            // cost an epoll_wait(0) per Task.yield; never polling during a burst (10,000 tasks
            // started at once) would leave due timers and ready sockets waiting for all of it.
            var budget = jobsBetweenPolls
            while budget > 0 && hasRunnableWork { budget -= runBatch(limit: budget) }
        }
    }

    private var hasRunnableWork: Bool { !local.isEmpty || !urgent.isEmpty }

    /// Waits a little (``SpinWait``) for remote work before sleeping in epoll, then takes it. A blocking call
    /// (a SQLite statement on a worker thread, say) usually finishes within microseconds; sleeping in epoll
    /// and being woken by `uv_async_send` costs tens of microseconds on a virtual machine (RT-WORKER-HOP). Due
    /// timers and IO readiness wait at most the spin.
    private func spinForRemoteWork() {
        if SpinWait.until({ remotePending.load(ordering: .acquiring) }) { takeRemoteWork() }
    }

    private func takeRemoteWork() {
        let incoming = remote.withLock { queue -> [Work] in
            remotePending.store(false, ordering: .relaxed)
            if queue.isEmpty { return [] }
            defer { queue = [] }
            return queue
        }
        if !incoming.isEmpty { local.append(contentsOf: incoming) }
    }

    /// Runs the urgent work, then up to `limit` jobs of those queued now (work queued meanwhile waits for the
    /// next batch); returns how many ran.
    private func runBatch(limit: Int) -> Int {
        guard let executor else { return 0 }  // never: attached at creation
        var count = 0
        if !urgent.isEmpty {
            let batch = urgent
            urgent.removeAll(keepingCapacity: true)
            for work in batch { run(work, on: executor) }
            count += batch.count
        }
        for _ in 0..<min(local.count, max(0, limit - count)) {
            guard let work = local.popFirst() else { break }
            run(work, on: executor)
            count += 1
        }
        return max(count, 1)
    }

    @inline(__always)
    private func run(_ work: Work, on executor: UnownedTaskExecutor) {
        switch work {
        case .job(let job): job.runSynchronously(on: executor)
        case .closure(let closure, _): closure()
        }
    }

    // MARK: Timers (loop thread only)

    func insertTimer(_ entry: TimerQueue.Entry) {
        guard !entry.isCancelled else { return }
        pendingTimerCount.add(1, ordering: .relaxed)
        if timers.insert(entry) { armTimer() }
    }

    func removeTimer(_ entry: TimerQueue.Entry) {
        if timers.remove(entry) { pendingTimerCount.subtract(1, ordering: .relaxed) }
    }

    var pendingTimers: Int { pendingTimerCount.load(ordering: .relaxed) }

    /// A timerfd polled by `poll`, or -1 (no timerfd on this system, or none could be made: libuv's timer is
    /// used then).
    private static func startTimerFD(_ loop: UnsafeMutablePointer<uv_loop_t>, _ poll: UnsafeMutablePointer<uv_poll_t>) -> Int32 {
        #if os(Linux)
        let fd = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK) | Int32(TFD_CLOEXEC))
        guard fd >= 0 else { return -1 }
        guard uv_poll_init(loop, poll, fd) == 0 else {
            Glibc.close(fd)
            return -1
        }
        uv_poll_start(poll, Int32(UV_READABLE.rawValue)) { handle, _, _ in
            guard let handle, let data = handle.pointee.data else { return }
            let loop = Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue()
            var expirations: UInt64 = 0
            _ = read(loop.timerFD, &expirations, MemoryLayout<UInt64>.size)  // clears the readiness
            loop.timerFired()
        }
        return fd
        #else
        return -1
        #endif
    }

    private func armTimer() {
        #if os(Linux)
        if timerFD >= 0 {
            // Absolute CLOCK_MONOTONIC time, the runtime's clock; a deadline already passed fires at once.
            var spec = itimerspec()
            if let next = timers.nextDeadline {
                let nanoseconds = max(next.nanoseconds, 1)
                spec.it_value = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
            }
            timerfd_settime(timerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
            return
        }
        #endif
        guard let next = timers.nextDeadline else {
            uv_timer_stop(timerHandle)
            return
        }
        let now = monotonicNow()
        // libuv timers have millisecond resolution: round up, so a timer never fires before its deadline.
        let milliseconds = next > now ? UInt64((next.nanoseconds - now.nanoseconds + 999_999) / 1_000_000) : 0
        uv_update_time(loop)
        uv_timer_start(timerHandle, { handle in
            guard let data = handle?.pointee.data else { return }
            Unmanaged<UVLoop>.fromOpaque(data).takeUnretainedValue().timerFired()
        }, milliseconds, 0)
    }

    private func timerFired() {
        let due = timers.popDue(now: monotonicNow())
        pendingTimerCount.subtract(due.count, ordering: .relaxed)
        firingTimers = true
        for entry in due where !entry.isCancelled { entry.fire() }
        firingTimers = false
        armTimer()
    }

    // MARK: Closing

    /// Tears the loop down after ``drive()`` returned: fails watchers, closes every handle and the loop.
    /// Loop thread only. Returns `uv_loop_close`'s result (0 when nothing leaked).
    @discardableResult
    func close(beforeClosing drainBlockingWork: () -> Void) -> Int32 {
        // Blocking work finishing now resumes tasks: run what it queued.
        drainBlockingWork()
        takeRemoteWork()
        while hasRunnableWork { _ = runBatch(limit: .max); takeRemoteWork() }
        // Closed and drained in one critical section: later work goes through runAfterClose, and nothing
        // is left stranded in `remote`.
        let leftovers = remote.withLock { queue -> [Work] in
            closedFlag.store(true, ordering: .releasing)
            defer { queue = [] }
            return queue
        }
        for work in leftovers + urgent + local { Self.runAfterClose(work) }
        local = []
        urgent = []
        for fd in polls.indices where polls[fd] != nil { forgetOnLoop(fd: Int32(fd)) }
        // A task that outlived the run: its sleeps end now instead of never.
        let abandoned = timers.removeAll()
        pendingTimerCount.subtract(abandoned.count, ordering: .relaxed)
        for entry in abandoned where !entry.isCancelled { entry.fire() }
        uv_timer_stop(timerHandle)
        uv_close(UnsafeMutableRawPointer(timerHandle).assumingMemoryBound(to: uv_handle_t.self), nil)
        uv_close(UnsafeMutableRawPointer(wakeup).assumingMemoryBound(to: uv_handle_t.self), nil)
        if timerFD >= 0 {
            uv_poll_stop(timerPoll)
            uv_close(UnsafeMutableRawPointer(timerPoll).assumingMemoryBound(to: uv_handle_t.self), nil)
        }
        uv_run(loop, UV_RUN_DEFAULT)  // runs the close callbacks
        #if os(Linux)
        if timerFD >= 0 { _ = Glibc.close(timerFD) }
        #endif
        loopCloseResult = uv_loop_close(loop)
        hasThread.store(false, ordering: .releasing)
        if loopCloseResult == 0 {
            // Nothing references the C memory any more: submit() no longer touches `wakeup` once closed.
            wakeup.deallocate()
            timerHandle.deallocate()
            timerPoll.deallocate()
            loop.deallocate()
        }
        return loopCloseResult
    }
}

/// The loop's clock: CLOCK_MONOTONIC (``RuntimeInstant/monotonicNow()``).
@inline(__always) func monotonicNow() -> RuntimeInstant { RuntimeInstant.monotonicNow() }

/// The SE-0417 task executor of a libuv loop, and the owner of the loop object.
///
/// Reference-counted like any object: a task started with `Task(executorPreference:)` retains its
/// executor until it ends, and `withTaskExecutorPreference` keeps it for its scope, so a task that outlives
/// its run keeps the executor and the (closed) loop object alive, and its jobs go on to the global executor.
/// Once no task and no backend holds it, both are freed: a process that starts many runs does not grow.
final class UVExecutor: TaskExecutor, Sendable {
    let loop: UVLoop

    init(jobsBetweenPolls: Int) {
        loop = UVLoop(jobsBetweenPolls: jobsBetweenPolls)
        loop.attach(self)  // the loop refers back to its executor without retaining it
    }

    func enqueue(_ job: consuming ExecutorJob) {
        loop.submit(.job(UnownedJob(job)))
    }
}
