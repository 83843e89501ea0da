#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which open file an fd number names right now: its device and inode.
///
/// An fd closed without `Runtime.forget(fd:)` leaves a backend's registration behind, and the OS reuses the
/// number for the next file opened. Comparing identities tells a backend that the file behind a number
/// changed, so that it can drop the stale registration (failing its waiter with
/// ``RuntimeError/Code/closed``) instead of waiting on it forever.
public struct DescriptorIdentity: Sendable, Hashable, CustomStringConvertible {
    public let device: UInt64
    public let inode: UInt64

    public var description: String { "dev \(device) ino \(inode)" }
}

/// The checks every backend makes on an fd before it watches it, so that all backends accept and refuse the
/// same fds (the conformance suite checks it).
public enum DescriptorCheck {
    /// The identity of `fd`.
    ///
    /// - Throws: ``RuntimeError/Code/badDescriptor`` when `fd` is not open.
    public static func identity(of fd: Int32) throws(RuntimeError) -> DescriptorIdentity {
        var info = stat()
        guard fd >= 0, fstat(fd, &info) == 0 else {
            throw RuntimeError(.badDescriptor, "fd \(fd) is not an open file descriptor")
        }
        return DescriptorIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// Refuses an fd in blocking mode.
    ///
    /// Readiness says a read or write will not block *if the fd is non-blocking*; on a blocking fd a spurious
    /// wake-up, or a write larger than the buffer's free space, blocks the whole event loop. No backend
    /// changes the fd's mode behind the caller's back (the mode belongs to the open file, which other
    /// processes may share): the caller sets `O_NONBLOCK`.
    ///
    /// - Throws: ``RuntimeError/Code/invalidArgument`` for a blocking fd; ``RuntimeError/Code/badDescriptor``
    ///   when `fd` is not open.
    public static func requireNonBlocking(_ fd: Int32) throws(RuntimeError) {
        let flags = fcntl(fd, F_GETFL)
        guard flags != -1 else { throw RuntimeError(.badDescriptor, "fd \(fd) is not an open file descriptor") }
        guard flags & O_NONBLOCK != 0 else {
            throw RuntimeError(
                .invalidArgument,
                "fd \(fd) is in blocking mode: set O_NONBLOCK (fcntl(fd, F_SETFL, flags | O_NONBLOCK)) before "
                    + "waiting on it, or a read or write after a wake-up could block the whole loop")
        }
    }

    /// Both checks; returns the identity.
    public static func validate(_ fd: Int32) throws(RuntimeError) -> DescriptorIdentity {
        let identity = try identity(of: fd)
        try requireNonBlocking(fd)
        return identity
    }

    /// The error a waiter gets when its fd was closed without `forget(fd:)` and the number now names another
    /// file.
    public static func reusedError(_ fd: Int32) -> RuntimeError {
        RuntimeError(
            .closed,
            "fd \(fd) was closed without Runtime.forget(fd:) while a task waited on it, and the number now names "
                + "another file: call forget(fd:) (or closeAfterForgetting(fd:)) before closing an fd")
    }
}
