// swift-tools-version:6.2
// 6.2: the upcoming feature NonisolatedNonsendingByDefault (SE-0461) below needs it, and package traits keep
// the integrations out of the builds of users who do not ask for them.
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
    // Synchronization's Mutex and Atomic: macOS 15 and its siblings.
    platforms: [.macOS(.v15), .iOS(.v18), .tvOS(.v18), .watchOS(.v11), .visionOS(.v2)],
    products: [
        .library(name: "Runtime", targets: ["Runtime"]),
        .library(name: "RuntimeUV", targets: ["RuntimeUV"]),
        .library(name: "RuntimeDispatch", targets: ["RuntimeDispatch"]),
        .library(name: "RuntimeTesting", targets: ["RuntimeTesting"]),
        .library(name: "AnyRuntime", targets: ["AnyRuntime"]),
        .library(name: "SQLAsync", targets: ["SQLAsync"]),
        // The integrations: empty unless their trait is enabled (see `traits` below).
        .library(name: "RuntimeNIO", targets: ["RuntimeNIO"]),
        .library(name: "SQLAsyncMetrics", targets: ["SQLAsyncMetrics"]),
        .library(name: "SQLAsyncTracing", targets: ["SQLAsyncTracing"]),
        .library(name: "SQLAsyncServiceLifecycle", targets: ["SQLAsyncServiceLifecycle"]),
        .executable(name: "anyruntime-demo", targets: ["RuntimeDemo"]),
        .executable(name: "anyruntime-ledger", targets: ["SQLLedger"]),
    ],
    // Each integration is a trait, off by default: users of the core never build SwiftNIO, swift-metrics,
    // swift-distributed-tracing or swift-service-lifecycle. `.package(url: …, from: …, traits: ["NIO"])` turns
    // one on; `swift build --enable-all-traits` builds everything (the scripts do).
    traits: [
        .trait(name: "NIO", description: "RuntimeNIO: a backend on SwiftNIO event loops"),
        .trait(name: "Metrics", description: "SQLAsyncMetrics: pool and query metrics through swift-metrics"),
        .trait(name: "Tracing", description: "SQLAsyncTracing: spans per query and transaction through swift-distributed-tracing"),
        .trait(name: "ServiceLifecycle", description: "SQLAsyncServiceLifecycle: an engine (and a NIO runtime) as a swift-service-lifecycle Service"),
        .default(enabledTraits: []),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-distributed-tracing", from: "1.7.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C libraries enter through thin system-library targets.
        .systemLibrary(name: "CLibUV", path: "Sources/CLibUV", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CSQLite3", path: "Sources/CSQLite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CEpoll", path: "Sources/CEpoll"),

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
        // The SwiftNIO backend (trait NIO): an event loop as the executor, its timers, NIOThreadPool for blocking
        // work, and a readiness thread of its own (NIO cannot watch a descriptor it does not read itself).
        .target(
            name: "RuntimeNIO",
            dependencies: [
                "Runtime", "CEpoll",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio", condition: .when(traits: ["NIO"])),
                .product(name: "NIOPosix", package: "swift-nio", condition: .when(traits: ["NIO"])),
            ],
            swiftSettings: swiftSettings),
        // Picks a backend by name (ANYRUNTIME_BACKEND=uv|dispatch|nio) for applications, demos and tests.
        .target(
            name: "AnyRuntime",
            dependencies: ["Runtime", "RuntimeUV", "RuntimeDispatch", .target(name: "RuntimeNIO", condition: .when(traits: ["NIO"]))],
            swiftSettings: swiftSettings),

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

        // The integrations with the Swift server ecosystem, each behind its trait.
        .target(
            name: "SQLAsyncMetrics",
            dependencies: ["SQLAsync", .product(name: "Metrics", package: "swift-metrics", condition: .when(traits: ["Metrics"]))],
            swiftSettings: swiftSettings),
        .target(
            name: "SQLAsyncTracing",
            dependencies: ["SQLAsync", .product(name: "Tracing", package: "swift-distributed-tracing", condition: .when(traits: ["Tracing"]))],
            swiftSettings: swiftSettings),
        .target(
            name: "SQLAsyncServiceLifecycle",
            dependencies: [
                "SQLAsync", "Runtime",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle", condition: .when(traits: ["ServiceLifecycle"])),
                .target(name: "RuntimeNIO", condition: .when(traits: ["NIO"])),
            ],
            swiftSettings: swiftSettings),

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
        // The integrations' own tests (each file behind its trait); the NIO backend also runs every other suite.
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "SQLAsync", "Runtime", "TestSupport", "SQLAsyncMetrics", "SQLAsyncTracing", "SQLAsyncServiceLifecycle",
                .target(name: "RuntimeNIO", condition: .when(traits: ["NIO"])),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics", condition: .when(traits: ["Metrics"])),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing", condition: .when(traits: ["Tracing"])),
                .product(name: "Tracing", package: "swift-distributed-tracing", condition: .when(traits: ["Tracing"])),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle", condition: .when(traits: ["ServiceLifecycle"])),
                .product(name: "NIOCore", package: "swift-nio", condition: .when(traits: ["NIO"])),
                .product(name: "NIOPosix", package: "swift-nio", condition: .when(traits: ["NIO"])),
            ],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "RuntimeConformanceTests",
            dependencies: ["Runtime", "RuntimeTesting", "RuntimeUV", "RuntimeDispatch", "AnyRuntime", "TestSupport"],
            swiftSettings: swiftSettings
        ),
    ]
)
