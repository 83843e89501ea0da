// swift-tools-version:6.2
// SQLAsync inside a Hummingbird app, on the app's own event loops (RuntimeNIO), started and stopped with
// swift-service-lifecycle. A package of its own, so that the root package never fetches Hummingbird.
import Foundation
import PackageDescription

// SwiftPM names a path dependency after its folder, which is whatever the clone is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "HummingbirdExample",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../..", traits: ["NIO", "ServiceLifecycle"]),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.0"),
    ],
    targets: [
        .executableTarget(
            name: "HummingbirdExample",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "RuntimeNIO", package: root),
                .product(name: "SQLAsync", package: root),
                .product(name: "SQLAsyncServiceLifecycle", package: root),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        )
    ]
)
