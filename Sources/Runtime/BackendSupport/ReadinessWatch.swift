import Synchronization

/// A one-shot readiness watcher for backends that keep their fd registry under a lock: it delivers its result
/// at most once, and withdraws itself from the registry when cancelled first.
///
/// Return it from ``RuntimeBackend/watch(fd:for:_:)``; call ``finish(_:)`` when the fd is ready or forgotten.
public final class ReadinessWatch: BackendRegistration, Sendable {
    /// The watched file descriptor.
    public let fd: Int32
    /// The readiness waited for.
    public let events: IOEvents
    /// Which file `fd` named when the watch was made (``DescriptorCheck/identity(of:)``), if the backend
    /// recorded it.
    public let identity: DescriptorIdentity?
    private let ready: @Sendable (Result<IOEvents, RuntimeError>) -> Void
    private let withdraw: @Sendable (ReadinessWatch) -> Void
    private let finished = Atomic<Bool>(false)

    /// - Parameters:
    ///   - fd: the file descriptor watched.
    ///   - events: the readiness waited for.
    ///   - identity: which file `fd` names now, to recognise a number reused after a close without `forget`.
    ///   - ready: the callback given to `watch`.
    ///   - withdraw: removes this watch from the backend's registry; called once, on ``cancel()``.
    public init(
        fd: Int32,
        events: IOEvents,
        identity: DescriptorIdentity? = nil,
        ready: @escaping @Sendable (Result<IOEvents, RuntimeError>) -> Void,
        withdraw: @escaping @Sendable (ReadinessWatch) -> Void
    ) {
        self.fd = fd
        self.events = events
        self.identity = identity
        self.ready = ready
        self.withdraw = withdraw
    }

    /// Delivers `result` once; later calls, and calls after ``cancel()``, do nothing.
    public func finish(_ result: Result<IOEvents, RuntimeError>) {
        if finished.exchange(true, ordering: .acquiringAndReleasing) { return }
        ready(result)
    }

    public func cancel() {
        if finished.exchange(true, ordering: .acquiringAndReleasing) { return }
        withdraw(self)
    }
}
