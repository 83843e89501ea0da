import Runtime
import Synchronization

/// A default actor: its methods must run on the runtime's executor too.
private actor PlacementProbe {
    func isOnExecutor(_ runtime: Runtime) -> Bool { runtime.backend.isOnExecutor }
}

extension RuntimeConformance {
    static let taskGroupTests: [ConformanceTest] = [
        ConformanceTest(
            "a.executor-placement",
            "the body, group children, async let and default actors run on the runtime's executor"
        ) { backend in
            try await backend.run {
                let runtime = try Runtime.current
                try check(runtime.backend.isOnExecutor, "the run body is not on the executor")
                let placements = Recorder<Bool>()
                try await Runtime.withTaskGroup { group in
                    for _ in 0..<10 {
                        try group.startSoon {
                            placements.append(runtime.backend.isOnExecutor)
                            try await Runtime.sleep(for: .milliseconds(1))
                            placements.append(runtime.backend.isOnExecutor)
                            // A child of a child.
                            try await Runtime.withTaskGroup { inner in
                                try inner.startSoon { placements.append(runtime.backend.isOnExecutor) }
                            }
                        }
                    }
                }
                try check(placements.count == 30, "expected 30 placements, got \(placements.count)")
                try check(placements.values.allSatisfy { $0 }, "a group child ran off the executor")
                async let child = runtime.backend.isOnExecutor
                let asyncLet = await child
                try check(asyncLet, "async let ran off the executor")
                let onActor = await PlacementProbe().isOnExecutor(runtime)
                try check(onActor, "a default actor ran off the executor")
                try await Runtime.runBlocking {}
                try check(runtime.backend.isOnExecutor, "the body did not come back to the executor after blocking work")
            }
        },

        ConformanceTest(
            "b.first-failure-cancels-siblings",
            "a failing child cancels its siblings and the group throws it; two failures are both reported"
        ) { backend in
            try await backend.run {
                let siblingCancelled = Flag()
                do {
                    try await Runtime.withTaskGroup { group in
                        try group.startSoon {
                            do {
                                try await Runtime.sleep(for: .seconds(30))
                            } catch is CancellationError {
                                siblingCancelled.set()
                                throw CancellationError()
                            }
                        }
                        try group.startSoon {
                            try await Runtime.sleep(for: .milliseconds(5))
                            throw Boom(id: 1)
                        }
                    }
                    throw fail("the group did not throw")
                } catch let error as Boom {
                    try check(error.id == 1, "the group threw \(error), expected Boom(1)")
                }
                try check(siblingCancelled.isSet, "the sibling was not cancelled")

                // The body's own failure cancels the children as well.
                let childCancelled = Flag()
                do {
                    try await Runtime.withTaskGroup { group in
                        try group.startSoon {
                            do { try await Runtime.sleep(for: .seconds(30)) } catch { childCancelled.set(); throw error }
                        }
                        try await Runtime.waitAllTasksBlocked()
                        throw Boom(id: 7)
                    }
                    throw fail("the group did not throw")
                } catch let error as Boom {
                    try check(error.id == 7, "expected the body's Boom(7), got \(error)")
                }
                try check(childCancelled.isSet, "the body's failure did not cancel the child")

                // Two children fail (each finishes its shielded work first): both are reported.
                do {
                    try await Runtime.withTaskGroup { group in
                        for id in 1...2 {
                            try group.startSoon {
                                _ = try await withCancelScope(shield: true) { _ in
                                    try await Runtime.sleep(for: .milliseconds(5))
                                }
                                throw Boom(id: id)
                            }
                        }
                    }
                    throw fail("the group did not throw")
                } catch let group as ErrorGroup {
                    let ids = group.errors.compactMap { ($0 as? Boom)?.id }.sorted()
                    try check(ids == [1, 2], "expected Boom 1 and 2 in the ErrorGroup, got \(group.errors)")
                }

                // A CancellationError that no cancellation explains is a failure, not swallowed.
                do {
                    try await Runtime.withTaskGroup { group in try group.startSoon { throw CancellationError() } }
                    throw fail("a child's unexplained CancellationError was swallowed")
                } catch let group as ErrorGroup {
                    try check(group.errors.count == 1 && group.errors[0] is CancellationError, "got \(group.errors)")
                }
            }
        },

        ConformanceTest(
            "c.start-returns-ready-value",
            "start returns the child's value only after it signalled, and the child keeps running"
        ) { backend in
            try await backend.run {
                let events = Recorder<String>()
                try await Runtime.withTaskGroup { group in
                    let value: Int = try await group.start { status in
                        events.append("child-before")
                        try await Runtime.sleep(for: .milliseconds(10))
                        events.append("signal")
                        try status.started(42)
                        try await Runtime.sleep(for: .milliseconds(10))
                        events.append("child-after")
                    }
                    events.append("start-returned:\(value)")
                }
                let expected = ["child-before", "signal", "start-returned:42", "child-after"]
                try check(events.values == expected, "events \(events.values), expected \(expected)")

                // A failure before the signal goes to the caller of start, not to the group.
                try await Runtime.withTaskGroup { group in
                    do {
                        let _: Int = try await group.start { _ in throw Boom(id: 3) }
                        throw fail("start did not throw the child's error")
                    } catch let error as Boom {
                        try check(error.id == 3, "start threw \(error)")
                    }
                    do {
                        let _: Int = try await group.start { _ in }
                        throw fail("start did not report a child that never signalled")
                    } catch let error as RuntimeError {
                        try check(error.code == .taskNotStarted, "start threw \(error)")
                    }
                }

                // Cancelling the caller of start before the signal cancels the child.
                let childCancelled = Flag()
                try await Runtime.withTaskGroup { group in
                    let result: Void? = try await moveOnAfter(.milliseconds(5)) { _ in
                        let _: Int = try await group.start { _ in
                            do { try await Runtime.sleep(for: .seconds(30)) } catch { childCancelled.set(); throw error }
                        }
                    }
                    try check(result == nil, "start was not cancelled")
                }
                try check(childCancelled.isSet, "the unsignalled child was not cancelled with its start call")
            }
        },

        ConformanceTest(
            "c2.group-cancel-and-late-start",
            "cancelling a group ends it without an error; a group that ended refuses new tasks"
        ) { backend in
            try await backend.run {
                let cancelled = Recorder<Int>()
                let escaped = Locked<Runtime.TaskGroup?>(nil)
                try await Runtime.withTaskGroup { group in
                    escaped.withLock { $0 = group }
                    for id in 0..<3 {
                        try group.startSoon {
                            do { try await Runtime.sleep(for: .seconds(30)) } catch { cancelled.append(id); throw error }
                        }
                    }
                    try await Runtime.sleep(for: .milliseconds(2))
                    group.cancel()
                    try await Runtime.sleep(for: .seconds(30))  // the body is in the group's scope: interrupted
                    throw fail("the body was not cancelled with its group")
                }
                try check(cancelled.values.sorted() == [0, 1, 2], "cancelled children: \(cancelled.values)")
                let group = escaped.withLock { $0 }
                do {
                    try group?.startSoon {}
                    throw fail("a closed group accepted a task")
                } catch let error as RuntimeError {
                    try check(error.code == .taskGroupClosed, "unexpected error \(error)")
                }
                try check(try Runtime.current.liveTasks == 0, "tasks outlived their group")
            }
        },
    ]
}
