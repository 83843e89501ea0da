import TestSupport
import Testing

extension Trait where Self == TimeLimitTrait {
    /// A time limit of `minutes`, stretched in sanitizer builds (``TestBuild/minutes(_:)``).
    static func limit(minutes: Int) -> Self { .timeLimit(.minutes(TestBuild.minutes(minutes))) }
}

extension Trait where Self == ConditionTrait {
    /// For a test that asserts a real-time bound against a real server: a sanitizer's slowdown breaks the
    /// bound, not the code, so it runs in ordinary builds only (reported as skipped, with this reason, in
    /// sanitizer builds).
    static var realTimeBounds: Self {
        .disabled(if: TestBuild.isSanitized, "asserts real-time bounds, which a sanitizer's slowdown breaks; runs in ordinary builds")
    }
}
