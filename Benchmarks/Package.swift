// swift-tools-version:6.1
// The benchmarks live in their own package so that library users never build benchmark dependencies.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "AnyRuntimeBenchmarks",
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
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
            cSettings: [.unsafeFlags(["-I/usr/include/postgresql"])],
            linkerSettings: [.linkedLibrary("pq"), .linkedLibrary("sqlite3")]
        ),
        .executableTarget(
            name: "RuntimeBenchmarks",
            dependencies: [
                "BenchmarkSupport",
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
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
