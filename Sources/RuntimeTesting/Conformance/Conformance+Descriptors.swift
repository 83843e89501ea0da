import Runtime
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// File descriptors behave the same on every backend: blocking fds are refused (and left as they are), a
// waiter whose fd was closed without `forget` and whose number was reused is failed instead of hanging, and
// synchronous code can hand an fd back.

extension RuntimeConformance {
    static let descriptorTests: [ConformanceTest] = [
        ConformanceTest(
            "s.blocking-fd-refused",
            "wait(fd:) refuses a blocking fd with invalidArgument and leaves its mode unchanged"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let pair = try SocketPair()
                let flags = fcntl(pair.left, F_GETFL)
                _ = fcntl(pair.left, F_SETFL, flags & ~O_NONBLOCK)
                try await expectRuntimeError(.invalidArgument, "a wait on a blocking fd") {
                    try await runtime.wait(fd: pair.left, for: .read)
                }
                try check(fcntl(pair.left, F_GETFL) & O_NONBLOCK == 0, "the backend switched the fd to non-blocking")
                try await expectRuntimeError(.badDescriptor, "a wait on a closed fd") {
                    try await runtime.wait(fd: 100_000, for: .read)
                }
                await pair.close(on: runtime)
            }
        },

        ConformanceTest(
            "s.reused-fd",
            "a waiter whose fd was closed without forget and reused is failed with closed; the new file works"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let first = try SocketPair()
                let reused = first.left
                let outcome = Recorder<String>()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        do {
                            try await runtime.wait(fd: reused, for: .read)
                            outcome.append("woken")  // the backend saw the close (poll's POLLNVAL): also fine
                        } catch let error as RuntimeError where error.code == .closed {
                            outcome.append("closed")
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    // The library's bug: close without forget, and the number names another socket at once.
                    // (dup2 closes `reused` and reuses its number in one step, so no other thread can take it.)
                    let second = try SocketPair()
                    guard dup2(second.left, reused) == reused else { throw fail("dup2 failed: errno \(errno)") }
                    let woke = Flag()
                    try group.startSoon {
                        try await runtime.wait(fd: reused, for: .read)
                        woke.set()
                    }
                    try await Runtime.waitAllTasksBlocked()
                    try second.send(1, from: second.right)
                    _ = try await failAfter(.seconds(10)) {
                        while !woke.isSet || outcome.count == 0 { try await Runtime.sleep(for: .milliseconds(1)) }
                    }
                    try check(outcome.count == 1, "the stale waiter: \(outcome.values)")
                    await runtime.forget(fd: reused)
                    _ = close(reused)
                    await second.close(on: runtime)
                    await runtime.forget(fd: first.right)
                    _ = close(first.right)
                }
            }
        },

        ConformanceTest(
            "s.close-after-forgetting",
            "closeAfterForgetting(fd:) from synchronous code fails the fd's waiters with closed, then closes it"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                let pair = try SocketPair()
                let failed = Flag()
                try await Runtime.withTaskGroup { group in
                    try group.startSoon {
                        do {
                            try await runtime.wait(fd: pair.left, for: .read)
                        } catch let error as RuntimeError where error.code == .closed {
                            failed.set()
                        }
                    }
                    try await Runtime.waitAllTasksBlocked()
                    runtime.closeAfterForgetting(fd: pair.left)  // no await: as a deinit would call it
                }
                try check(failed.isSet, "the waiter was not failed with closed")
                // Closed: the other end reads end-of-file. (Checked there: the number itself may already name
                // another test's fd.)
                _ = try await failAfter(.seconds(10)) {
                    var byte: UInt8 = 0
                    while true {
                        try await runtime.wait(fd: pair.right, for: .read)
                        if read(pair.right, &byte, 1) == 0 { break }
                    }
                }
                await runtime.forget(fd: pair.right)
                _ = close(pair.right)
            }
        },
    ]
}
