import Runtime
@testable import SQLAsync
import Testing

/// The choice of server for a read, without a server: events in, decisions out.
@Suite("Read routing decisions")
struct ReadRouterTests {
    let start = RuntimeInstant(nanoseconds: 1_000_000_000_000)

    @Test("standbys take turns; one never checked is checked first; a fresh reading is trusted for a check interval")
    func turns() {
        var router = ReadRouter(standbys: 2, maxLag: .seconds(1), checkInterval: .seconds(1))
        #expect(router.choose(now: start, after: nil) == .standby(0, check: true))
        router.checked(0, now: start, inRecovery: true, lag: .zero, replayed: LogPosition(100))
        #expect(router.choose(now: start, after: nil) == .standby(1, check: true))
        router.checked(1, now: start, inRecovery: true, lag: .zero, replayed: LogPosition(100))
        #expect(router.choose(now: start, after: nil) == .standby(0, check: false))
        #expect(router.choose(now: start, after: nil) == .standby(1, check: false))
        // A second later both readings are stale: checked again.
        #expect(router.choose(now: start.advanced(by: .seconds(1)), after: nil) == .standby(0, check: true))
    }

    @Test("a standby lagging more than the bound is skipped until a check finds it caught up; with none left, the primary")
    func lag() {
        var router = ReadRouter(standbys: 2, maxLag: .seconds(1), checkInterval: .seconds(1))
        router.checked(0, now: start, inRecovery: true, lag: .seconds(3), replayed: nil)
        router.checked(1, now: start, inRecovery: true, lag: .milliseconds(1_500), replayed: nil)
        #expect(!router.fits(0, after: nil) && !router.fits(1, after: nil))
        #expect(router.choose(now: start, after: nil) == .primary)
        let later = start.advanced(by: .seconds(1))
        #expect(router.choose(now: later, after: nil) == .standby(0, check: true))
        router.checked(0, now: later, inRecovery: true, lag: .zero, replayed: nil)
        #expect(router.fits(0, after: nil))
    }

    @Test("a read that must see earlier writes: only a standby that replayed them, or one no longer in recovery")
    func readYourWrites() {
        var router = ReadRouter(standbys: 1, maxLag: .seconds(10), checkInterval: .seconds(1))
        router.checked(0, now: start, inRecovery: true, lag: .zero, replayed: LogPosition(100))
        #expect(router.fits(0, after: LogPosition(100)))
        #expect(!router.fits(0, after: LogPosition(101)))
        // Behind, read at this very instant: not asked again now.
        #expect(router.choose(now: start, after: LogPosition(101)) == .primary)
        // Behind, read a moment ago: checked again (a standby replays within milliseconds).
        #expect(router.choose(now: start.advanced(by: .milliseconds(10)), after: LogPosition(101)) == .standby(0, check: true))
        router.checked(0, now: start, inRecovery: false, lag: .zero, replayed: nil)
        #expect(router.fits(0, after: LogPosition(.max)), "a promoted standby has every write")
    }

    @Test("an unreachable standby is skipped for at least a second; a read does not try one standby twice")
    func unreachable() {
        var router = ReadRouter(standbys: 2, maxLag: .seconds(1), checkInterval: .milliseconds(100))
        router.failed(0, now: start)
        #expect(router.choose(now: start, after: nil) == .standby(1, check: true))
        #expect(router.choose(now: start.advanced(by: .milliseconds(500)), after: nil, excluding: [1]) == .primary)
        #expect(router.choose(now: start.advanced(by: .seconds(1)), after: nil, excluding: [1]) == .standby(0, check: true))
    }

    @Test("log positions read and print as pg_lsn does")
    func positions() {
        #expect(LogPosition("16/B374D848")?.value == 0x16_B374_D848)
        #expect(LogPosition("16/B374D848")?.description == "16/B374D848")
        #expect(LogPosition("0/0") == LogPosition(0))
        #expect(LogPosition("") == nil && LogPosition("1/2/3") == nil && LogPosition("x/1") == nil)
        #expect(LogPosition("1/0")! > LogPosition("0/FFFFFFFF")!)
    }
}
