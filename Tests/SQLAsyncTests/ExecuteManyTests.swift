import Runtime
import SQLAsync
import TestSupport
import Testing

@Suite("executeMany", .limit(minutes: 1))
struct ExecuteManyTests {
    @Test("10,000 parameter sets in one batch; RETURNING rows; atomic on a failing set; NULLs and types mixed",
          arguments: TestBackend.selected, TestDatabase.allCases)
    func batches(_ backend: TestBackend, _ database: TestDatabase) async throws {
        try await CoreExecutionTests.withLeague(backend, database) { connection in
            let insertPlayer = try insert(into: Players.self)
                .values(Players.name.set(Parameter<String>("name")), Players.score.set(Parameter<Int32>("score")),
                        Players.nickname.set(Parameter<String?>("nickname")))
                .compiled()
            let sets: [[String: any SQLBindable]] = (0..<10_000).map { index in
                ["name": "player \(index) ✓", "score": Int32(index % 100), "nickname": index % 3 == 0 ? String?.none : "n\(index)"]
            }
            let inserted = try await connection.executeMany(insertPlayer, parameterSets: sets)
            #expect(inserted.rowsAffected == 10_000)
            #expect(try await connection.execute(select(count()).from(Players.self)).scalar(Int.self) == 10_000)
            #expect(try await connection.execute(select(count()).from(Players.self).where(Players.nickname.isNull())).scalar(Int.self) == 3_334)

            // RETURNING: every execution's rows, in order.
            let returned = try await connection.executeMany(
                insert(into: Teams.self).values(Teams.name.set(Parameter<String>("name"))).returning(Teams.name),
                parameterSets: [["name": "a"], ["name": "b"], ["name": "c"]])
            #expect(try returned.scalars(String.self) == ["a", "b", "c"])

            // A failing set in the middle: the constraint error, and nothing of the batch kept.
            let before = try await connection.execute(select(count()).from(Teams.self)).scalar(Int.self)
            do {
                try await connection.executeMany(
                    insert(into: Teams.self).values(Teams.name.set(Parameter<String>("name"))),
                    parameterSets: [["name": "d"], ["name": "a"], ["name": "e"]])
                Issue.record("a duplicate was accepted")
            } catch let error as SQLError {
                #expect(error.kind == .constraint)
            }
            #expect(try await connection.execute(select(count()).from(Teams.self)).scalar(Int.self) == before)
            #expect(!connection.isBroken && !connection.isInTransaction)

            // Inside a transaction that rolls back, the batch goes too.
            struct Undo: Error {}
            await #expect(throws: Undo.self) {
                try await connection.withTransaction { connection in
                    try await connection.executeMany(insertPlayer, parameterSets: Array(sets.prefix(10)))
                    throw Undo()
                }
            }
            #expect(try await connection.execute(select(count()).from(Players.self)).scalar(Int.self) == 10_000)

            // A NULL in the first set and a value later: the parameter's type comes from the value.
            try await connection.executeMany(
                update(Players.self).set(Players.teamID.set(Parameter<Int64?>("team"))).where(Players.name == Parameter<String>("name")),
                parameterSets: [["team": Int64?.none, "name": "player 1 ✓"], ["team": returned.isEmpty ? 0 : Int64(1), "name": "player 2 ✓"]])
            // A missing named parameter is refused before anything runs.
            await #expect { try await connection.executeMany(insertPlayer, parameterSets: [["name": "x"]]) } throws: {
                ($0 as? SQLError)?.kind == .misuse
            }
            // An empty batch does nothing.
            #expect(try await connection.executeMany(insertPlayer, parameterSets: []).rowsAffected == 0)
        }
    }

    @Test("a batch cancelled at any point keeps all of its rows or none, and the pool stays healthy",
          arguments: TestBackend.selected.filter { $0 != .virtual }, [PoolDatabase.sqliteFile, .postgresql])
    func cancelledBatches(_ backend: TestBackend, _ database: PoolDatabase) async throws {
        try await database.withEngine(.patient) { engine in
            try await backend.run {
                let table = SQL.identifier("batch_\(UInt32.random(in: 0...UInt32.max))")
                try await engine.withConnection { try await $0.execute("CREATE TABLE \(table) (name TEXT NOT NULL)") }
                let insertName: SQL = "INSERT INTO \(table) (name) VALUES (\(parameter: "name"))"
                let sets: [[String: any SQLBindable]] = (0..<5_000).map { ["name": "p\($0)"] }
                var outcomes: [String: Int] = [:]
                for step in 0..<30 {
                    let before = try await engine.withConnection { try await $0.execute("SELECT count(*) FROM \(table)").scalar(Int.self) } ?? -1
                    let done: QueryResult? = try await moveOnAfter(.microseconds(Int64(step) * 1_000)) { _ in
                        try await engine.withConnection { try await $0.executeMany(insertName, parameterSets: sets) }
                    }
                    let after = try await engine.withConnection { try await $0.execute("SELECT count(*) FROM \(table)").scalar(Int.self) } ?? -1
                    #expect(after == before || after == before + 5_000, "a batch was kept in part: \(after - before) rows")
                    outcomes[done == nil ? (after == before ? "cancelled, none kept" : "cancelled, all kept") : "completed", default: 0] += 1
                }
                // Every lease came back, and what the pool holds works.
                let statistics = try engine.poolStatistics()
                #expect(statistics.open == statistics.idle && statistics.waiting == 0, "\(statistics)")
                try await engine.withConnection { connection in
                    #expect(!connection.isBroken && !connection.isInTransaction)
                    try await connection.execute("DROP TABLE \(table)")
                }
                print("executeMany cancellation \(backend) \(database): \(outcomes.sorted { $0.key < $1.key })")
                await engine.dispose()
            }
        }
    }
}
