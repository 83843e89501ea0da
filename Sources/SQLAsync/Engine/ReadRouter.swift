import Runtime

/// A position in PostgreSQL's write-ahead log (`pg_lsn`, written `16/B374D848`): how far a server has
/// written, or a standby replayed.
struct LogPosition: Sendable, Hashable, Comparable, CustomStringConvertible {
    let value: UInt64

    init(_ value: UInt64) { self.value = value }

    /// Reads `pg_lsn` text; nil for anything else.
    init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let high = UInt32(parts[0], radix: 16), let low = UInt32(parts[1], radix: 16) else { return nil }
        value = UInt64(high) << 32 | UInt64(low)
    }

    static func < (lhs: LogPosition, rhs: LogPosition) -> Bool { lhs.value < rhs.value }

    var description: String { String(value >> 32, radix: 16, uppercase: true) + "/" + String(value & 0xFFFF_FFFF, radix: 16, uppercase: true) }
}

/// Which server serves a read, as a pure value: events in (a check's reading, a failed connect), decisions out.
/// ``Engine`` does the IO it asks for.
///
/// A standby serves a read when it answers, lags at most `maxLag` behind the primary and — for a read that
/// must see earlier writes — has replayed the log up to them. Its state is read on a connection to it at most
/// once per `checkInterval`; a standby that cannot be reached is skipped for that long. Standbys take turns;
/// when none fits, the primary serves the read (or the read fails, when the routing says so).
struct ReadRouter: Sendable, Equatable {
    struct Standby: Sendable, Equatable {
        /// When its state was last read.
        var checkedAt: RuntimeInstant?
        /// How far behind the primary it was then.
        var lag: Duration = .zero
        /// How far it had replayed the log then (nil: not a standby any more, or unknown).
        var replayed: LogPosition?
        /// Whether it was still in recovery (a promoted standby is a primary: it has every write).
        var inRecovery = true
        /// Skipped until then: it could not be reached.
        var downUntil: RuntimeInstant?
    }

    private(set) var standbys: [Standby]
    let maxLag: Duration
    let checkInterval: Duration
    /// The standby whose turn is next.
    private var turn = 0

    init(standbys: Int, maxLag: Duration, checkInterval: Duration) {
        self.standbys = Array(repeating: Standby(), count: standbys)
        self.maxLag = maxLag
        self.checkInterval = checkInterval
    }

    enum Choice: Sendable, Equatable {
        /// Use this standby; `check`: read its state on the connection first (then ask ``fits(_:after:)``).
        case standby(Int, check: Bool)
        /// No standby fits: the primary serves the read.
        case primary
    }

    /// A read wants a server at `now`; it must see the writes up to `after` (nil: any recent state will do).
    /// `excluding`: standbys this read tried already.
    mutating func choose(now: RuntimeInstant, after: LogPosition?, excluding: Set<Int> = []) -> Choice {
        guard !standbys.isEmpty else { return .primary }
        for offset in 0..<standbys.count {
            let index = (turn + offset) % standbys.count
            guard !excluding.contains(index) else { continue }
            let standby = standbys[index]
            if let downUntil = standby.downUntil, downUntil > now { continue }
            let fresh = standby.checkedAt.map { $0.advanced(by: checkInterval) > now } ?? false
            if fresh {
                if standby.lag > maxLag { continue }
                if !covers(standby, after) {
                    // Known to be behind: a check may find it caught up (a standby replays within
                    // milliseconds), but only when its reading is not from this very instant.
                    guard standby.checkedAt != now else { continue }
                    turn = (index + 1) % standbys.count
                    return .standby(index, check: true)
                }
                turn = (index + 1) % standbys.count
                return .standby(index, check: false)
            }
            turn = (index + 1) % standbys.count
            return .standby(index, check: true)
        }
        return .primary
    }

    private func covers(_ standby: Standby, _ after: LogPosition?) -> Bool {
        guard let after, standby.inRecovery else { return true }
        guard let replayed = standby.replayed else { return false }
        return replayed >= after
    }

    /// A check read standby `index`'s state at `now`.
    mutating func checked(_ index: Int, now: RuntimeInstant, inRecovery: Bool, lag: Duration, replayed: LogPosition?) {
        guard standbys.indices.contains(index) else { return }
        standbys[index] = Standby(checkedAt: now, lag: inRecovery ? lag : .zero, replayed: replayed, inRecovery: inRecovery, downUntil: nil)
    }

    /// Whether standby `index`, as last checked, may serve a read that must see the writes up to `after`.
    func fits(_ index: Int, after: LogPosition?) -> Bool {
        guard standbys.indices.contains(index) else { return false }
        return standbys[index].lag <= maxLag && covers(standbys[index], after)
    }

    /// Standby `index` could not be reached at `now`: skipped for a check interval (at least a second, so that
    /// a dead standby does not cost every read a failed connect).
    mutating func failed(_ index: Int, now: RuntimeInstant) {
        guard standbys.indices.contains(index) else { return }
        standbys[index].downUntil = now.advanced(by: max(checkInterval, .seconds(1)))
        standbys[index].checkedAt = nil
    }
}
