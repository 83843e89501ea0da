import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A short wait without sleeping, for a result another thread is about to deliver: a futex or epoll sleep
/// and its wake-up cost tens of microseconds on a virtual machine, several times the work a SQLite call or a
/// queued job usually takes.
///
/// The wait polls `ready` busily for ``busyNanoseconds``, then yields the CPU at every turn (so that a thread
/// it may be waiting for gets to run when cores are scarce) until ``totalNanoseconds`` have passed. Fewer
/// threads poll busily at once than there are cores: the others only yield, so that spinning never takes the
/// last core from the threads doing the work.
///
/// The spinning costs CPU time while a wait lasts (up to 50 µs each time). Where that matters more than
/// latency — many processes sharing few cores, a battery — turn it off for the whole process with
/// ``isEnabled`` (or `ANYRUNTIME_SPIN=0` in the environment): waits then sleep at once.
public enum SpinWait {
    /// Whether waits spin before sleeping (default: on, unless `ANYRUNTIME_SPIN=0` is in the environment).
    public static var isEnabled: Bool {
        get { enabled.load(ordering: .relaxed) }
        set { enabled.store(newValue, ordering: .relaxed) }
    }
    private static let enabled = Atomic<Bool>(getenv("ANYRUNTIME_SPIN").map { String(cString: $0) != "0" } ?? true)

    /// How long to poll without yielding.
    public static let busyNanoseconds: Int64 = 10_000
    /// How long to wait in all before giving up (and sleeping the usual way).
    public static let totalNanoseconds: Int64 = 50_000

    /// Polls `ready` until it returns true (returns true) or the time is up (returns false).
    public static func until(_ ready: () -> Bool) -> Bool {
        if ready() { return true }
        guard isEnabled else { return false }
        let start = now()
        var busy = false
        defer { if busy { busySpinners.subtract(1, ordering: .relaxed) } }
        var turns = 0
        while true {
            turns &+= 1
            if ready() { return true }
            if turns & 31 == 0 || !busy {
                let elapsed = now() &- start
                if elapsed >= totalNanoseconds { return false }
                if busy && elapsed >= busyNanoseconds {
                    busy = false
                    busySpinners.subtract(1, ordering: .relaxed)
                } else if !busy && elapsed < busyNanoseconds {
                    busy = takeBusySlot()  // one may have been freed since the last turn
                }
                if !busy { sched_yield() }
            }
        }
    }

    private static func takeBusySlot() -> Bool {
        guard busySpinners.load(ordering: .relaxed) < maximumBusySpinners else { return false }
        if busySpinners.add(1, ordering: .relaxed).newValue <= maximumBusySpinners { return true }
        busySpinners.subtract(1, ordering: .relaxed)
        return false
    }

    /// Threads polling busily now, and how many may: one less than the cores (at least one).
    private static let busySpinners = Atomic<Int>(0)
    private static let maximumBusySpinners = max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)) - 1)

    @inline(__always)
    private static func now() -> Int64 { RuntimeInstant.monotonicNow().nanoseconds }
}
