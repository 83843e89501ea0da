public import Runtime

extension VirtualTimeRuntime {
    /// When an idle loop moves the virtual clock to the next deadline by itself.
    public struct Autojump: Sendable, Hashable, CustomStringConvertible {
        /// Real time the loop must stay idle before it jumps; `nil` for never.
        public let threshold: Duration?

        /// Jump as soon as every task is blocked (trio's `autojump_threshold = 0`; the default here).
        public static let immediately = Autojump(threshold: .zero)
        /// Never jump by itself: the clock moves only through ``VirtualTimeRuntime/jump(by:)`` (trio's
        /// default, `inf`).
        public static let never = Autojump(threshold: nil)

        /// Jump once the loop has been idle for `threshold` of real time.
        ///
        /// - Throws: ``RuntimeError/Code/invalidArgument`` for a negative threshold.
        public static func after(_ threshold: Duration) throws(RuntimeError) -> Autojump {
            guard threshold >= .zero else {
                throw RuntimeError(.invalidArgument, "Autojump.after: threshold must be >= 0, got \(threshold)")
            }
            return Autojump(threshold: threshold)
        }

        private init(threshold: Duration?) { self.threshold = threshold }

        public var description: String { threshold.map { "after \($0)" } ?? "never" }

        /// The poll(2) timeout in milliseconds, -1 for never.
        var milliseconds: Int32 {
            guard let threshold else { return -1 }
            // Rounded up: a threshold of 1 µs still waits for a poll that finds nothing.
            let ns = threshold.saturatingNanoseconds
            return Int32(clamping: ns / 1_000_000 + (ns % 1_000_000 == 0 ? 0 : 1))
        }
    }
}
