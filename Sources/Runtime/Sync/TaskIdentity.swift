/// The identity of a Swift task, for owners of locks and borrowers of capacity (trio's `Task` object in
/// `statistics().owner`).
///
/// Two identities are equal when they name the same running task. Take it with ``current``; an identity
/// outlives its task only as a value (the address of a finished task may be reused by a later one).
public struct TaskIdentity: Sendable, Hashable, CustomStringConvertible {
    let address: UInt

    /// The calling task's identity; `nil` outside a task (synchronous code not called from one).
    public static var current: TaskIdentity? {
        withUnsafeCurrentTask { task in
            // `UnsafeCurrentTask` is one pointer to the task object; its bits are the task's address, stable
            // while the task runs. Only compared, never turned back into a task.
            task.map { TaskIdentity(address: unsafeBitCast($0, to: UInt.self)) }
        }
    }

    public var description: String { "task 0x" + String(address, radix: 16) }
}
