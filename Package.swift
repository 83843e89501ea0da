// swift-tools-version:6.1
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
    // Async functions without isolation run on their caller's executor instead of hopping to the generic one
    // (SE-0461): every such hop costs a task switch, and a look-up of the task's preferred executor.
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
]

let package = Package(
    name: "AnyRuntime",
    products: [
        .library(name: "Runtime", targets: ["Runtime"]),
        .library(name: "RuntimeUV", targets: ["RuntimeUV"]),
        .library(name: "RuntimeDispatch", targets: ["RuntimeDispatch"]),
        .library(name: "RuntimeTesting", targets: ["RuntimeTesting"]),
        .library(name: "AnyRuntime", targets: ["AnyRuntime"]),
        .library(name: "SQLAsync", targets: ["SQLAsync"]),
        .executable(name: "anyruntime-demo", targets: ["RuntimeDemo"]),
        .executable(name: "anyruntime-ledger", targets: ["SQLLedger"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // C libraries enter through thin system-library targets.
        .systemLibrary(name: "CLibUV", path: "Sources/CLibUV", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CSQLite3", path: "Sources/CSQLite3", providers: [.apt(["libsqlite3-dev"])]),

        // The contract and everything built once on it. Imports nothing backend-specific.
        .target(
            name: "Runtime",
            dependencies: [.product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "RuntimeUV",
            dependencies: ["Runtime", "CLibUV", .product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings),
        .target(
            name: "RuntimeDispatch",
            dependencies: ["Runtime", .product(name: "DequeModule", package: "swift-collections")],
            swiftSettings: swiftSettings),
        .target(name: "RuntimeTesting", dependencies: ["Runtime"], swiftSettings: swiftSettings),
        // Picks a backend by name (ANYRUNTIME_BACKEND=uv|dispatch) for applications, demos and tests.
        .target(name: "AnyRuntime", dependencies: ["Runtime", "RuntimeUV", "RuntimeDispatch"], swiftSettings: swiftSettings),

        // The async SQL toolkit: imports Runtime and the C libraries, never a backend (scripts/check-rules.sh).
        .target(
            name: "SQLAsync",
            dependencies: [
                "Runtime", "CLibPQ", "CSQLite3",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: swiftSettings
        ),

        .executableTarget(
            name: "RuntimeDemo", dependencies: ["AnyRuntime", "Runtime", "SQLAsync", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),

        // The ledger: random cancellations checked against the database (scripts/ledger.sh; CI runs a short one).
        .executableTarget(
            name: "SQLLedger",
            dependencies: ["Runtime", "SQLAsync", "TestSupport", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),

        // Test support shared by the test targets (backend selection); not a product.
        .target(
            name: "TestSupport", dependencies: ["Runtime", "RuntimeTesting", "AnyRuntime"], path: "Tests/TestSupport",
            swiftSettings: swiftSettings),
        .testTarget(
            name: "RuntimeTests", dependencies: ["Runtime", "RuntimeTesting", "RuntimeUV", "AnyRuntime", "TestSupport"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "SQLAsyncTests",
            dependencies: [
                "SQLAsync", "Runtime", "RuntimeTesting", "TestSupport", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "RuntimeConformanceTests",
            dependencies: ["Runtime", "RuntimeTesting", "RuntimeUV", "RuntimeDispatch", "AnyRuntime", "TestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
