import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Checks what the compiler accepts: an unloaded relationship cannot be read as its value without handling
/// the "not loaded" case — the type-level reason a query can never hide behind an attribute access.
@Suite("Compile-time guarantees", .limit(minutes: 1))
struct CompileTimeTests {
    static let model = """
        import SQLAsync
        final class Author: Model {
            enum Authors: TableSchema {
                static let tableName = "authors"
                static let columns: [any AnyColumn] = []
            }
            typealias Schema = Authors
            var books: Related<[String]> = .notLoaded
            init(row: Row) throws {}
            func update(from row: Row) throws {}
            func encode(to values: inout ColumnValues) {}
        }

        """

    /// Type-checks `source` against the built SQLAsync module; returns the exit status and the diagnostics.
    static func typecheck(_ source: String) throws -> (status: Int32, output: String) {
        let root = String(#filePath.split(separator: "/").dropLast(3).reduce(into: "") { $0 += "/" + $1 })
        let modules = root + "/.build/debug/Modules"
        guard access(modules + "/SQLAsync.swiftmodule", R_OK) == 0 else {
            throw CompileCheckError("the SQLAsync module is not at \(modules): build with `swift build --build-tests` first")
        }
        var template = Array("/tmp/anyruntime-typecheck-XXXXXX".utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ $0.baseAddress.flatMap { mkdtemp($0) } }) else {
            throw CompileCheckError("mkdtemp failed")
        }
        let directory = String(cString: made)
        defer { _ = system("rm -rf '\(directory)'") }
        let file = directory + "/snippet.swift"
        let log = directory + "/log.txt"
        guard let handle = fopen(file, "w") else { throw CompileCheckError("cannot write \(file)") }
        fputs(source, handle)
        fclose(handle)
        let command = "swiftc -typecheck -I '\(modules)' -I '\(root)/Sources/CLibPQ' -I '\(root)/Sources/CSQLite3' "
            + "-Xcc -I/usr/include/postgresql '\(file)' > '\(log)' 2>&1"
        let status = system(command)
        var output = ""
        if let reader = fopen(log, "r") {
            var buffer = [CChar](repeating: 0, count: 4096)
            while fgets(&buffer, Int32(buffer.count), reader) != nil {
                output += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            fclose(reader)
        }
        return (status, output)
    }

    @Test("reading an unloaded relationship as its value does not compile; handling both cases does")
    func unloadedRelationships() throws {
        let misuse = try Self.typecheck(Self.model + "func count(_ author: Author) -> Int { author.books.count }\n")
        #expect(misuse.status != 0, "reading an unloaded relationship as an array compiled")
        #expect(misuse.output.contains("has no member 'count'"), "\(misuse.output)")

        let handled = try Self.typecheck(Self.model + """
            func count(_ author: Author) -> Int? {
                switch author.books {
                case .loaded(let books): books.count
                case .notLoaded: nil
                }
            }

            """)
        #expect(handled.status == 0, "the handled form did not compile: \(handled.output)")
    }
}

struct CompileCheckError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
