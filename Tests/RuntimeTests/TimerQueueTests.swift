import Runtime
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("TimerQueue and BlockingThreadPool")
struct TimerQueueTests {
    @Test("pops due entries in deadline order and removes arbitrary entries in O(log n)")
    func heapOrder() {
        var queue = TimerQueue()
        var seed: UInt64 = 42
        var entries: [TimerQueue.Entry] = []
        for _ in 0..<1_000 {
            seed = seed &* 6_364_136_223_846_793_005 &+ 1
            entries.append(TimerQueue.Entry(deadline: RuntimeInstant(nanoseconds: Int64(seed >> 40)), fire: {}))
        }
        for entry in entries { queue.insert(entry) }
        let count = queue.count
        #expect(count == 1_000)
        // Remove every third entry, as cancelled timeouts would be.
        for (index, entry) in entries.enumerated() where index % 3 == 0 {
            let removed = queue.remove(entry)
            #expect(removed)
        }
        let removedTwice = queue.remove(entries[0])
        #expect(!removedTwice, "a removed entry was removed twice")
        let due = queue.popDue(now: .never)
        #expect(due.count == entries.count - (entries.count + 2) / 3)
        #expect(zip(due, due.dropFirst()).allSatisfy { $0.deadline <= $1.deadline })
        let isEmpty = queue.isEmpty
        #expect(isEmpty)
    }

    @Test("popDue leaves future entries; insert reports a new earliest deadline")
    func partialPop() {
        var queue = TimerQueue()
        let late = TimerQueue.Entry(deadline: RuntimeInstant(nanoseconds: 100), fire: {})
        let early = TimerQueue.Entry(deadline: RuntimeInstant(nanoseconds: 10), fire: {})
        let firstChanged = queue.insert(late)
        let secondChanged = queue.insert(early)
        #expect(firstChanged && secondChanged)
        let due = queue.popDue(now: RuntimeInstant(nanoseconds: 50)).map(\.deadline.nanoseconds)
        #expect(due == [10])
        let next = queue.nextDeadline
        #expect(next == RuntimeInstant(nanoseconds: 100))
    }

    @Test("a burst of jobs gets threads of its own, even when a worker is idle (a job may wait for the next)")
    func burstDoesNotShareAnIdleThread() {
        let pool = BlockingThreadPool(maximumThreads: 4)
        let warm = Counter()
        pool.submit { warm.increment() }
        while pool.jobsInFlight > 0 { usleep(100) }  // one idle worker now
        let secondRan = Flag()
        let firstDone = Flag()
        pool.submit {
            for _ in 0..<5_000 where !secondRan.isSet { usleep(1_000) }  // waits up to 5 s for the next job
            firstDone.set()
        }
        pool.submit { secondRan.set() }
        pool.shutdown()
        #expect(secondRan.isSet && firstDone.isSet)
    }

    @Test("shutdown waits at most its bound for a job that does not end; what is queued still runs, on a thread of its own")
    func shutdownBound() {
        let pool = BlockingThreadPool(maximumThreads: 1)
        let release = Flag()
        let queuedRan = Flag()
        pool.submit { while !release.isSet { usleep(1_000) } }  // a job whose caller abandoned it, blocked
        pool.submit { queuedRan.set() }
        let start = RuntimeInstant.monotonicNow()
        let stuck = pool.shutdown(waitingAtMost: .milliseconds(200))
        let waited = start.duration(to: .monotonicNow())
        #expect(stuck == 1)
        #expect(waited >= .milliseconds(200) && waited < .seconds(2), "shutdown took \(waited)")
        #expect(!queuedRan.isSet, "the queued job ran on the caller, or beside the blocked one in a one-thread pool")
        release.set()
        for _ in 0..<2_000 where !queuedRan.isSet { usleep(1_000) }
        #expect(queuedRan.isSet, "the queued job was lost")
        // A negative bound returns at once (idle threads not gone yet are detached and leave by themselves).
        let idle = BlockingThreadPool(maximumThreads: 2)
        idle.submit {}
        let negativeStart = RuntimeInstant.monotonicNow()
        _ = idle.shutdown(waitingAtMost: .seconds(-1))
        #expect(negativeStart.duration(to: .monotonicNow()) < .seconds(1))
        // A bound too large to add to the clock saturates: the idle threads are joined.
        let large = BlockingThreadPool(maximumThreads: 2)
        large.submit {}
        while large.jobsInFlight > 0 { usleep(100) }
        #expect(large.shutdown(waitingAtMost: .seconds(Int64.max)) == 0)
    }

    @Test("the pool bounds its threads, runs every job and joins its threads on shutdown")
    func pool() {
        let pool = BlockingThreadPool(maximumThreads: 3)
        let counter = Counter()
        for _ in 0..<100 { pool.submit { counter.increment() } }
        pool.shutdown()
        #expect(counter.value == 100)
        #expect(pool.threadCount == 0)
        #expect(pool.jobsInFlight == 0)
        pool.submit { counter.increment() }  // after shutdown: still run, by the next shutdown
        pool.shutdown()
        #expect(counter.value == 101)
    }

    @Test("a spin wait returns as soon as its condition holds, and gives up within its bound")
    func spinWait() {
        #expect(SpinWait.until { true })
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        #expect(!SpinWait.until { false })
        var end = timespec()
        clock_gettime(CLOCK_MONOTONIC, &end)
        let elapsed = Int64(end.tv_sec - start.tv_sec) * 1_000_000_000 + Int64(end.tv_nsec - start.tv_nsec)
        #expect(elapsed >= SpinWait.totalNanoseconds, "gave up after \(elapsed) ns")
        // Made true by another thread: seen by a spin, or by the next one after a sleep.
        let pool = BlockingThreadPool(maximumThreads: 1)
        let flag = Flag()
        pool.submit { flag.set() }
        while !SpinWait.until({ flag.isSet }) { usleep(100) }
        #expect(flag.isSet)
        pool.shutdown()
    }
}
