import Synchronization

/// A min-heap of timers with O(log n) insertion *and* removal, for backends: cancelled timeouts leave at
/// once instead of piling up until their deadline.
///
/// Not thread-safe: the owner serializes access (a loop thread, or a lock).
public struct TimerQueue: ~Copyable {
    private var heap: [TimerQueue.Entry] = []

    public init() { heap.reserveCapacity(64) }

    /// A scheduled timer. Backends return it (wrapped) as their ``BackendRegistration``.
    public final class Entry: Sendable {
        /// When it fires.
        public let deadline: RuntimeInstant
        /// What it runs; called at most once by the owner of the queue.
        public let fire: @Sendable () -> Void
        private let cancelledFlag = Atomic<Bool>(false)

        /// Marks the timer cancelled: its owner must not run ``fire`` any more. Safe from any thread.
        public func markCancelled() { cancelledFlag.store(true, ordering: .releasing) }

        /// Whether ``markCancelled()`` was called.
        public var isCancelled: Bool { cancelledFlag.load(ordering: .acquiring) }

        // Position in the heap; -1 when not in it. Read and written only by the queue's owner, under its
        // serialization, so an atomic with relaxed ordering suffices to satisfy the checker.
        private let slot = Atomic<Int>(-1)
        fileprivate var index: Int {
            get { slot.load(ordering: .relaxed) }
            set { slot.store(newValue, ordering: .relaxed) }
        }

        public init(deadline: RuntimeInstant, fire: @escaping @Sendable () -> Void) {
            self.deadline = deadline
            self.fire = fire
        }

        /// Whether the entry is in a queue.
        public var isScheduled: Bool { index >= 0 }
    }

    /// Timers waiting.
    public var count: Int { heap.count }
    /// Whether no timer waits.
    public var isEmpty: Bool { heap.isEmpty }
    /// The earliest deadline.
    public var nextDeadline: RuntimeInstant? { heap.first?.deadline }

    /// Adds `entry`; returns whether the earliest deadline changed (re-arm the OS timer then).
    @discardableResult
    public mutating func insert(_ entry: Entry) -> Bool {
        guard entry.index < 0 else { return false }
        entry.index = heap.count
        heap.append(entry)
        siftUp(entry.index)
        return entry.index == 0
    }

    /// Removes `entry` if it is queued; returns whether it was.
    @discardableResult
    public mutating func remove(_ entry: Entry) -> Bool {
        let index = entry.index
        guard index >= 0, index < heap.count, heap[index] === entry else { return false }
        let last = heap.count - 1
        if index != last {
            heap.swapAt(index, last)
            heap[index].index = index
        }
        heap.removeLast()
        entry.index = -1
        if index < heap.count {
            siftDown(index)
            siftUp(index)
        }
        return true
    }

    /// Removes and returns every entry due at `now`, earliest first. The caller runs their `fire`.
    public mutating func popDue(now: RuntimeInstant) -> [Entry] {
        var due: [Entry] = []
        while let top = heap.first, top.deadline <= now {
            remove(top)
            due.append(top)
        }
        return due
    }

    /// Removes every entry.
    public mutating func removeAll() -> [Entry] {
        let all = heap
        for entry in all { entry.index = -1 }
        heap.removeAll()
        return all
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[parent].deadline <= heap[child].deadline { break }
            heap.swapAt(parent, child)
            heap[parent].index = parent
            heap[child].index = child
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        let count = heap.count
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var smallest = parent
            if left < count, heap[left].deadline < heap[smallest].deadline { smallest = left }
            if right < count, heap[right].deadline < heap[smallest].deadline { smallest = right }
            if smallest == parent { return }
            heap.swapAt(smallest, parent)
            heap[smallest].index = smallest
            heap[parent].index = parent
            parent = smallest
        }
    }
}
