@testable import SQLAsync
import Testing

@Suite("What observers are told about a statement")
struct StatementInfoTests {
    @Test("the operation is one of SQL's usual keywords or OTHER, whatever the text; a script's text is withheld")
    func operationIsBounded() {
        func operation(_ text: String) -> String {
            SQLStatementInfo(text: text, system: .postgresql, namespace: nil).operation
        }
        #expect(operation("select 1") == "SELECT")
        #expect(operation("  (SELECT 1) UNION (SELECT 2)") == "SELECT")
        #expect(operation("\n\tWith t AS (SELECT 1) SELECT * FROM t") == "WITH")
        #expect(operation("savepoint s1") == "SAVEPOINT")
        // Anything else — a comment first, a word that only starts like a keyword, letters outside ASCII, an
        // invented word as long as a paragraph — is one value, so a metric's dimension stays small.
        for text in ["/* note */ SELECT 1", "SELECTED", "DO $$ BEGIN END $$", "", "sélect 1", String(repeating: "x", count: 10_000)] {
            #expect(operation(text) == "OTHER", "\(text.prefix(20))")
        }
        let script = SQLStatementInfo(text: "CREATE ROLE app PASSWORD 'hunter2'", system: .postgresql, namespace: nil, isScript: true)
        #expect(script.text == nil && script.operation == "SCRIPT")
        // Not kept at all: no description or dump of the value shows it.
        #expect(!String(describing: script).contains("hunter2") && !String(reflecting: script).contains("hunter2"))
        #expect(SQLStatementInfo(text: "SELECT $1", system: .sqlite, namespace: "app.db").text == "SELECT $1")
    }
}
