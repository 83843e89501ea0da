// swift-tools-version:6.1
// The benchmarks live in their own package so that library users never build benchmark dependencies.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

// libdispatch's C headers ship with the Swift toolchain: <toolchain>/usr/lib/swift, beside <toolchain>/usr/bin/swift.
let toolchainHeaders: String = {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    for directory in path.split(separator: ":") {
        let swift = URL(fileURLWithPath: String(directory)).appendingPathComponent("swift")
        if FileManager.default.isExecutableFile(atPath: swift.path) {
            let headers = swift.resolvingSymlinksInPath().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("lib/swift")
            if FileManager.default.fileExists(atPath: headers.appendingPathComponent("dispatch/dispatch.h").path) {
                return headers.path
            }
        }
    }
    return "/usr/lib/swift"
}()

let package = Package(
    name: "AnyRuntimeBenchmarks",
    dependencies: [
        // The NIO backend's rows and the cost of metrics and tracing need the root's traits.
        .package(path: "..", traits: ["NIO", "Metrics", "Tracing"]),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        // The peers the SQL rows are compared with.
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
    ],
    targets: [
        .target(
            name: "BenchmarkSupport",
            dependencies: [.product(name: "Runtime", package: root)],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        // The raw C libraries doing the SQL workloads: the floors no wrapper can beat.
        .target(
            name: "CFloors",
            cSettings: [.unsafeFlags(["-I/usr/include/postgresql", "-I\(toolchainHeaders)"])],
            linkerSettings: [
                .linkedLibrary("pq"), .linkedLibrary("sqlite3"), .linkedLibrary("uv"), .linkedLibrary("dispatch"),
            ]
        ),
        .executableTarget(
            name: "RuntimeBenchmarks",
            dependencies: [
                "BenchmarkSupport", "CFloors",
                .product(name: "Runtime", package: root),
                .product(name: "AnyRuntime", package: root),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "SQLBenchmarks",
            dependencies: [
                "BenchmarkSupport", "CFloors",
                .product(name: "Runtime", package: root),
                .product(name: "AnyRuntime", package: root),
                .product(name: "SQLAsync", package: root),
                .product(name: "SQLAsyncMetrics", package: root),
                .product(name: "SQLAsyncTracing", package: root),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
