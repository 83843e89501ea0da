public import DequeModule
public import Synchronization

/// Creates a memory channel: a queue of `Element`s between tasks with back-pressure (anyio's
/// `create_memory_object_stream`).
///
/// ```swift
/// let (send, receive) = try makeMemoryChannel(of: Int.self, bufferSize: 16)
/// try group.startSoon { defer { send.close() }; for i in 0..<100 { try await send.send(i) } }
/// for try await value in receive { print(value) }      // ends when every sender is closed
/// ```
///
/// - Parameters:
///   - type: the element type, for call sites that cannot infer it.
///   - bufferSize: how many elements wait in the channel before ``MemorySendChannel/send(_:)`` blocks. 0 (the
///     default, as in anyio) makes every send wait for a receiver; `Int.max` never blocks.
/// - Returns: the sending and the receiving end. Each end can be cloned; the channel ends for receivers when
///   every send end is closed (or released), and breaks for senders when every receive end is.
/// - Throws: ``RuntimeError/Code/invalidArgument`` when `bufferSize` is negative.
public func makeMemoryChannel<Element: Sendable>(
    of type: Element.Type = Element.self,
    bufferSize: Int = 0
) throws(RuntimeError) -> (MemorySendChannel<Element>, MemoryReceiveChannel<Element>) {
    guard bufferSize >= 0 else {
        throw RuntimeError(.invalidArgument, "makeMemoryChannel: bufferSize must be >= 0, got \(bufferSize)")
    }
    let core = MemoryChannelCore<Element>(bufferSize: bufferSize)
    return (MemorySendChannel(core), MemoryReceiveChannel(core))
}

/// A snapshot of a memory channel, the same from either end (trio's `MemoryChannelStatistics`).
public struct MemoryChannelStatistics: Sendable, Hashable {
    /// Elements in the buffer.
    public var currentBufferUsed: Int
    /// The buffer's size.
    public var maxBufferSize: Int
    /// Send ends not closed.
    public var openSendChannels: Int
    /// Receive ends not closed.
    public var openReceiveChannels: Int
    /// Tasks blocked in `send`.
    public var tasksWaitingSend: Int
    /// Tasks blocked in `receive`.
    public var tasksWaitingReceive: Int
}

/// What a channel's two ends share. (Sending and receiving are inlinable: specialized for the element type in
/// the caller's module, they need no look-up of generic metadata per element.)
@usableFromInline
final class MemoryChannelCore<Element: Sendable>: Sendable {
    @usableFromInline
    struct WaitingSender: Sendable {
        @usableFromInline let parker: Parker<Void>
        @usableFromInline let element: Element
        @inlinable init(parker: Parker<Void>, element: Element) {
            self.parker = parker
            self.element = element
        }
    }
    @usableFromInline
    struct State: Sendable {
        @usableFromInline var buffer = Deque<Element>()
        @usableFromInline var waitingSenders = Deque<WaitingSender>()
        @usableFromInline var waitingReceivers = WaitQueue<Element>()
        @usableFromInline var openSenders = 1
        @usableFromInline var openReceivers = 1
        @inlinable init() {}
    }
    @usableFromInline let bufferSize: Int
    @usableFromInline let state: Locked<State>

    @inlinable init(bufferSize: Int) {
        self.bufferSize = bufferSize
        state = Locked(State())
    }

    func statistics() -> MemoryChannelStatistics {
        state.withLock { state in
            MemoryChannelStatistics(
                currentBufferUsed: state.buffer.count, maxBufferSize: bufferSize, openSendChannels: state.openSenders,
                openReceiveChannels: state.openReceivers, tasksWaitingSend: state.waitingSenders.count,
                tasksWaitingReceive: state.waitingReceivers.count)
        }
    }

    @usableFromInline static var endOfStream: RuntimeError {
        RuntimeError(.endOfStream, "every send end of the channel is closed and its buffer is empty")
    }
    @usableFromInline static var closedWhileWaiting: RuntimeError {
        RuntimeError(.closedResource, "the channel's receive end was closed while this receive waited")
    }
    @usableFromInline static var broken: RuntimeError {
        RuntimeError(.brokenResource, "every receive end of the channel is closed")
    }
}

/// The sending end of a memory channel. Close it (or let it go) when done; see ``makeMemoryChannel(of:bufferSize:)``.
public final class MemorySendChannel<Element: Sendable>: Sendable {
    @usableFromInline let core: MemoryChannelCore<Element>
    @usableFromInline let closed = Atomic<Bool>(false)

    init(_ core: MemoryChannelCore<Element>) { self.core = core }

    deinit { close() }

    /// Sends `element`, waiting while the buffer is full.
    ///
    /// When cancelled while waiting, `element` was not delivered.
    ///
    /// - Throws: ``RuntimeError/Code/brokenResource`` when every receiver is closed;
    ///   ``RuntimeError/Code/closedResource`` when this end is closed; `CancellationError`.
    @inlinable
    public func send(_ element: Element) async throws {
        try CancelScope.checkCancelled(CancelScope.current)
        if try sendNowOrNeedWait(element) { return }
        let parker = Parker<Void>()
        do {
            try await Runtime.park(parker) {
                let done = try core.state.withLock { state throws(RuntimeError) -> Bool in
                    if try Self.deliver(element, &state, bufferSize: core.bufferSize) { return true }
                    state.waitingSenders.append(.init(parker: parker, element: element))
                    return false
                }
                if done { parker.resume(returning: ()) }
            }
        } catch {
            core.state.withLock { state in
                if let index = state.waitingSenders.firstIndex(where: { $0.parker === parker }) {
                    state.waitingSenders.remove(at: index)
                }
            }
            throw error
        }
    }

    /// Sends `element` if that needs no waiting.
    ///
    /// - Throws: ``RuntimeError/Code/wouldBlock`` when the buffer is full; the errors of ``send(_:)``.
    @inlinable
    public func sendNowait(_ element: Element) throws(RuntimeError) {
        guard try sendNowOrNeedWait(element) else {
            throw RuntimeError(.wouldBlock, "the channel's buffer is full and no receiver is waiting")
        }
    }

    @inlinable
    func sendNowOrNeedWait(_ element: Element) throws(RuntimeError) -> Bool {
        guard !closed.load(ordering: .acquiring) else {
            throw RuntimeError(.closedResource, "send on a closed send end of a channel")
        }
        return try core.state.withLock { state throws(RuntimeError) in
            try Self.deliver(element, &state, bufferSize: core.bufferSize)
        }
    }

    /// Hands `element` to a waiting receiver or the buffer; `false` when it must wait.
    @inlinable
    static func deliver(
        _ element: Element,
        _ state: inout MemoryChannelCore<Element>.State,
        bufferSize: Int
    ) throws(RuntimeError) -> Bool {
        guard state.openReceivers > 0 else { throw MemoryChannelCore<Element>.broken }
        if state.waitingReceivers.resumeFirst(.success(element)) { return true }
        if state.buffer.count < bufferSize {
            state.buffer.append(element)
            return true
        }
        return false
    }

    /// What the channel holds right now.
    public func statistics() -> MemoryChannelStatistics { core.statistics() }

    /// Another send end of the same channel; the channel stays open for receivers until every one is closed.
    ///
    /// - Throws: ``RuntimeError/Code/closedResource`` when this end is closed.
    public func clone() throws(RuntimeError) -> MemorySendChannel<Element> {
        guard !closed.load(ordering: .acquiring) else {
            throw RuntimeError(.closedResource, "clone of a closed send end of a channel")
        }
        core.state.withLock { $0.openSenders += 1 }
        return MemorySendChannel(core)
    }

    /// Closes this end. When it was the last send end, waiting receivers get
    /// ``RuntimeError/Code/endOfStream`` once the buffer is drained. Idempotent.
    public func close() {
        if closed.exchange(true, ordering: .acquiringAndReleasing) { return }
        core.state.withLock { state in
            state.openSenders -= 1
            if state.openSenders == 0 {
                state.waitingReceivers.resumeAll(.failure(MemoryChannelCore<Element>.endOfStream))
            }
        }
    }
}

/// The receiving end of a memory channel, also an `AsyncSequence` that ends when every sender is closed.
public final class MemoryReceiveChannel<Element: Sendable>: Sendable, AsyncSequence {
    public typealias Failure = any Error
    @usableFromInline let core: MemoryChannelCore<Element>
    @usableFromInline let closed = Atomic<Bool>(false)

    init(_ core: MemoryChannelCore<Element>) { self.core = core }

    deinit { close() }

    /// Receives the next element, waiting while there is none.
    ///
    /// When cancelled, no element is lost: one handed over before the cancellation is returned instead.
    ///
    /// - Throws: ``RuntimeError/Code/endOfStream`` when every sender is closed and the buffer is empty;
    ///   ``RuntimeError/Code/closedResource`` when this end is closed (also while waiting); `CancellationError`.
    @inlinable
    public func receive() async throws -> Element {
        try CancelScope.checkCancelled(CancelScope.current)
        if let element = try receiveNowOrNil() { return element }
        let parker = Parker<Element>()
        do {
            return try await Runtime.park(parker) {
                let element = try core.state.withLock { state throws(RuntimeError) -> Element? in
                    // Closed by another task since the fast path: refuse instead of waiting forever.
                    guard state.openReceivers > 0, !closed.load(ordering: .acquiring) else {
                        throw RuntimeError(.closedResource, "receive on a closed receive end of a channel")
                    }
                    if let element = try Self.take(&state, bufferSize: core.bufferSize) { return element }
                    state.waitingReceivers.append(parker)
                    return nil
                }
                if let element { parker.resume(returning: element) }
            }
        } catch {
            _ = core.state.withLock { $0.waitingReceivers.remove(parker) }
            throw error
        }
    }

    /// Receives an element if one is there without waiting.
    ///
    /// - Throws: ``RuntimeError/Code/wouldBlock`` when none is; the errors of ``receive()``.
    @inlinable
    public func receiveNowait() throws(RuntimeError) -> Element {
        guard let element = try receiveNowOrNil() else {
            throw RuntimeError(.wouldBlock, "the channel is empty and no sender is waiting")
        }
        return element
    }

    @inlinable
    func receiveNowOrNil() throws(RuntimeError) -> Element? {
        guard !closed.load(ordering: .acquiring) else {
            throw RuntimeError(.closedResource, "receive on a closed receive end of a channel")
        }
        return try core.state.withLock { state throws(RuntimeError) in
            try Self.take(&state, bufferSize: core.bufferSize)
        }
    }

    /// Takes the next element from the buffer or a waiting sender; `nil` when the caller must wait.
    @inlinable
    static func take(
        _ state: inout MemoryChannelCore<Element>.State,
        bufferSize: Int
    ) throws(RuntimeError) -> Element? {
        if let element = state.buffer.popFirst() {
            // Room in the buffer: move one waiting sender's element in.
            while let sender = state.waitingSenders.popFirst() {
                if sender.parker.resume(returning: ()) {
                    state.buffer.append(sender.element)
                    break
                }
            }
            return element
        }
        while let sender = state.waitingSenders.popFirst() {
            if sender.parker.resume(returning: ()) { return sender.element }
        }
        if state.openSenders == 0 { throw MemoryChannelCore<Element>.endOfStream }
        return nil
    }

    /// What the channel holds right now.
    public func statistics() -> MemoryChannelStatistics { core.statistics() }

    /// Another receive end of the same channel; receivers share the elements (each goes to one of them).
    ///
    /// - Throws: ``RuntimeError/Code/closedResource`` when this end is closed.
    public func clone() throws(RuntimeError) -> MemoryReceiveChannel<Element> {
        guard !closed.load(ordering: .acquiring) else {
            throw RuntimeError(.closedResource, "clone of a closed receive end of a channel")
        }
        core.state.withLock { $0.openReceivers += 1 }
        return MemoryReceiveChannel(core)
    }

    /// Closes this end. When it was the last receive end, waiting senders get
    /// ``RuntimeError/Code/brokenResource`` and buffered elements are dropped. Idempotent.
    public func close() {
        if closed.exchange(true, ordering: .acquiringAndReleasing) { return }
        // Elements leave the lock before they are released: one may hold the last reference to an end of this
        // same channel, whose deinit closes it and takes the lock again.
        let dropped = core.state.withLock { state -> (Deque<Element>, Deque<MemoryChannelCore<Element>.WaitingSender>) in
            state.openReceivers -= 1
            guard state.openReceivers == 0 else { return ([], []) }
            let dropped = (state.buffer, state.waitingSenders)
            state.buffer = []
            state.waitingSenders = []
            // Receivers blocked on another (already closed) receive end can never be served now.
            state.waitingReceivers.resumeAll(.failure(MemoryChannelCore<Element>.closedWhileWaiting))
            return dropped
        }
        for sender in dropped.1 { sender.parker.resume(throwing: MemoryChannelCore<Element>.broken) }
    }

    // MARK: AsyncSequence

    public func makeAsyncIterator() -> Iterator { Iterator(channel: self) }

    /// Iterates until every sender is closed; other errors are thrown.
    public struct Iterator: AsyncIteratorProtocol {
        let channel: MemoryReceiveChannel<Element>

        public mutating func next() async throws -> Element? {
            do {
                return try await channel.receive()
            } catch let error as RuntimeError where error.code == .endOfStream {
                return nil
            }
        }
    }
}
