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
    ],
    targets: [
        .executableTarget(
            name: "RuntimeBenchmarks",
            dependencies: [
                .product(name: "Runtime", package: root),
                .product(name: "AnyRuntime", package: root),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)
