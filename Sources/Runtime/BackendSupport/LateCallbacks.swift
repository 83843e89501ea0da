import Dispatch

/// Delivers the callbacks of a backend that has shut down, for tasks that outlived their run.
///
/// The contract says `fire` and `ready` never run synchronously inside `scheduleTimer` or `watch`, also
/// after the run ended: the caller may hold a lock that the callback takes (a cancel scope arming its
/// deadline did once). A shut-down backend has no loop left to run them on, so they run here, on a thread of
/// Swift's global dispatch queue, right away.
public enum LateCallbacks {
    /// Runs `callback` soon on another thread; never inside this call.
    public static func deliver(_ callback: @escaping @Sendable () -> Void) {
        DispatchQueue.global().async(execute: callback)
    }
}
