#if canImport(Glibc)
import Glibc
#endif
import TestSupport

/// The fuzzers' random source and budget.
///
/// Each run draws a new seed, so CI explores new inputs every time; a failure prints the seed, and
/// `ANYRUNTIME_FUZZ_SEED=<seed>` replays that run exactly. `ANYRUNTIME_FUZZ_SCALE=<n>` multiplies every
/// fuzzer's budget (CI runs the default, 1).
struct Fuzz {
    static let seed: UInt64 = {
        if let text = getenv("ANYRUNTIME_FUZZ_SEED").map({ String(cString: $0) }), let seed = UInt64(text) { return seed }
        return UInt64.random(in: 0...UInt64.max)
    }()

    static let scale: Int = {
        if let text = getenv("ANYRUNTIME_FUZZ_SCALE").map({ String(cString: $0) }), let scale = Int(text), scale > 0 { return scale }
        return 1
    }()

    /// A generator for one fuzzer (`salt` keeps fuzzers sharing a seed from drawing the same values).
    static func generator(_ salt: String) -> SplitMix {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in salt.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return SplitMix(seed: seed ^ hash)
    }

    /// Says how to replay a failure.
    static var replay: String { "replay with ANYRUNTIME_FUZZ_SEED=\(seed)" }
}

extension RandomNumberGenerator {
    mutating func chance(_ probability: Double) -> Bool { Double.random(in: 0..<1, using: &self) < probability }
    mutating func pick<T>(_ choices: [T]) -> T { choices[Int.random(in: 0..<choices.count, using: &self)] }
}
