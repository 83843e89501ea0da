import Runtime

// Bulk data in and out: PostgreSQL's COPY (raw, or rows encoded by SQLAsync), and the same rows API on SQLite
// through batched inserts, so that a bulk load is written once for both databases.

/// COPY data that the body of ``Connection/copyIn(_:writing:)`` writes: kept in a buffer and handed to the
/// server in pieces of 64 KiB, so the body writes as it likes (whole rows, or any split of them).
///
/// Use it inside that body only.
public final class CopyWriter {
    var buffer: [UInt8] = []
    private let send: ([UInt8]) async throws -> Void

    init(send: @escaping ([UInt8]) async throws -> Void) {
        self.send = send
        buffer.reserveCapacity(PostgresConnection.copyChunk + 4096)
    }

    /// Appends bytes of COPY data (in the format the statement names: text, CSV or binary).
    public func write(_ bytes: some Sequence<UInt8>) async throws {
        buffer.append(contentsOf: bytes)
        if buffer.count >= PostgresConnection.copyChunk { try await flush() }
    }

    /// Appends text of COPY data, as UTF-8.
    public func write(_ text: String) async throws {
        try await write(text.utf8)
    }

    /// Hands what is buffered to the server once it is large enough.
    func flushIfFull() async throws {
        if buffer.count >= PostgresConnection.copyChunk { try await flush() }
    }

    /// Hands what is buffered to the server.
    func flush() async throws {
        guard !buffer.isEmpty else { return }
        try await send(buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}

extension Connection {
    /// Runs `sql`, a PostgreSQL `COPY … FROM STDIN`, with the data `body` writes; returns the rows copied.
    ///
    /// ```swift
    /// try await connection.copyIn("COPY items (id, name) FROM STDIN (FORMAT csv)") { writer in
    ///     for item in items { try await writer.write("\(item.id),\(csvQuoted(item.name))\n") }
    /// }
    /// ```
    ///
    /// The COPY is all or nothing: until the data is complete, a cancellation or an error thrown by `body`
    /// ends it with a failure, the server keeps none of it, and the call throws that cause
    /// (`CancellationError`: nothing was copied). A bad row fails the COPY with the server's error. The
    /// statement is sent as written (COPY takes no parameters): build it from trusted text, never from values
    /// — values go in the data. For rows of ``SQLValue``s, ``copy(_:into:schema:columns:)-3z705`` writes the data
    /// itself and checks every value against its column.
    ///
    /// - Throws: ``SQLError`` (``SQLError/Kind/misuse`` on SQLite, or for a statement that is not a
    ///   `COPY … FROM STDIN`); what `body` throws; `CancellationError`.
    @discardableResult
    public func copyIn(_ sql: String, writing body: (CopyWriter) async throws -> Void) async throws -> Int {
        let postgres = try copyDriver(sql)
        logger?.debug("copy in", metadata: ["sql": "\(sql)"])
        return try await running(sql) {
            try await postgres.copyIn(sql) { send in
                let writer = CopyWriter(send: send)
                try await body(writer)
                try await writer.flush()
            }
        }
    }

    /// Runs `sql`, a PostgreSQL `COPY … TO STDOUT`, handing its data to `body` in chunks of about 64 KiB
    /// (whole rows in the text and CSV formats); returns the rows copied.
    ///
    /// ```swift
    /// try await connection.copyOut("COPY items TO STDOUT (FORMAT csv, HEADER)") { chunk in
    ///     try file.write(contentsOf: chunk)
    /// }
    /// ```
    ///
    /// When `body` throws or the call is cancelled, the server is asked to stop, what it still sends is
    /// dropped (within the cancellation grace; the connection is closed past it), and the call throws that
    /// cause — the connection is clean for the next statement. Data reaches `body` as it arrives: the server
    /// is held back (TCP flow control) while `body` is busy, so memory stays bounded.
    ///
    /// - Throws: ``SQLError`` (``SQLError/Kind/misuse`` on SQLite, or for a statement that is not a
    ///   `COPY … TO STDOUT`); what `body` throws; `CancellationError`.
    @discardableResult
    public func copyOut(_ sql: String, reading body: ([UInt8]) async throws -> Void) async throws -> Int {
        let postgres = try copyDriver(sql)
        logger?.debug("copy out", metadata: ["sql": "\(sql)"])
        return try await running(sql) { try await postgres.copyOut(sql, body) }
    }

    /// Copies `rows` into `table` — PostgreSQL's `COPY … FROM STDIN`, SQLite's batched `INSERT` — and returns
    /// the rows copied. All or nothing, on both databases.
    ///
    /// ```swift
    /// let rows = accounts.lazy.map { [$0.id.sqlValue, $0.name.sqlValue, $0.balance.sqlValue] }
    /// try await connection.copy(rows, into: "accounts", columns: ["id", "name", "balance"])
    /// ```
    ///
    /// Each value is written as a bound parameter of the same value would be, and checked first against its
    /// column's type (PostgreSQL: read from the catalog once per call): an integer the column cannot hold
    /// exactly, bytes bound for a text column, text with a NUL byte or an unstorable date stop the COPY with
    /// ``SQLError/Kind/invalidParameter`` naming the row and the column, and nothing is copied. The rows are
    /// read as they are sent (a lazy sequence keeps memory flat).
    ///
    /// - Parameters:
    ///   - rows: one array of values per row, in the order of `columns`.
    ///   - table: the table's name (quoted as an identifier: give it as it is spelled in the catalog).
    ///   - schema: the table's schema, when it is not found through the search path.
    ///   - columns: the columns the values go to.
    @discardableResult
    public func copy<Rows: Sequence>(
        _ rows: Rows, into table: String, schema: String? = nil, columns: [String]
    ) async throws -> Int where Rows.Element == [SQLValue] {
        var iterator = rows.makeIterator()
        return try await copy(into: table, schema: schema, columns: columns) { iterator.next() }
    }

    /// ``copy(_:into:schema:columns:)-3z705`` with rows from an asynchronous sequence (a file being read, another
    /// database's stream): each row is copied as it arrives.
    @discardableResult
    public func copy<Rows: AsyncSequence>(
        _ rows: Rows, into table: String, schema: String? = nil, columns: [String]
    ) async throws -> Int where Rows.Element == [SQLValue] {
        var iterator = rows.makeAsyncIterator()
        return try await copy(into: table, schema: schema, columns: columns) { try await iterator.next(isolation: #isolation) }
    }

    /// ``copy(_:into:schema:columns:)-3z705`` into a Core table: every column of `table` in its declared order
    /// unless `columns` names some.
    @discardableResult
    public func copy<Rows: Sequence, Table: TableSchema>(
        _ rows: Rows, into table: Table.Type, columns: [any AnyColumn]? = nil
    ) async throws -> Int where Rows.Element == [SQLValue] {
        try await copy(rows, into: Table.tableName, columns: (columns ?? Table.columns).map(\.definition.name))
    }

    /// The rows API over either database: `next` gives the rows one by one.
    private func copy(
        into table: String, schema: String?, columns: [String], next: () async throws -> [SQLValue]?
    ) async throws -> Int {
        let qualified = (schema.map { SQL.quoted($0) + "." } ?? "") + SQL.quoted(table)
        let columnList = columns.map(SQL.quoted).joined(separator: ", ")
        guard !columns.isEmpty else { throw SQLError(.misuse, "copy(_:into:columns:) needs at least one column") }
        guard driver is PostgresConnection else {
            return try await insertInBatches(into: qualified, columnList: columnList, columnCount: columns.count, next: next)
        }
        let types = try await columnTypes(of: qualified, columns: columns)
        let sql = "COPY \(qualified) (\(columnList)) FROM STDIN"
        return try await copyIn(sql) { writer in
            var encoder = CopyTextEncoder(columns: columns, types: types, sql: sql)
            while let row = try await next() {
                try encoder.append(row, to: &writer.buffer)
                try await writer.flushIfFull()
            }
        }
    }

    /// PostgreSQL: the types of `columns` of `table` — a domain's base type, through domains over domains (0
    /// for a column not found: the COPY then fails with the server's own error).
    private func columnTypes(of table: String, columns: [String]) async throws -> [UInt32] {
        let result = try await execute(
            text: """
                SELECT a.attname::text, (WITH RECURSIVE d(t, domain) AS (\
                SELECT a.atttypid, (SELECT typtype = 'd' FROM pg_type WHERE oid = a.atttypid) \
                UNION ALL SELECT p.typbasetype, (SELECT typtype = 'd' FROM pg_type WHERE oid = p.typbasetype) \
                FROM d JOIN pg_type p ON p.oid = d.t WHERE d.domain) \
                SELECT t FROM d WHERE NOT d.domain LIMIT 1)::int8 \
                FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
                """,
            binds: [.text(table)])
        var types: [String: UInt32] = [:]
        for row in result {
            types[try row.decode(0, as: String.self)] = UInt32(truncatingIfNeeded: try row.decode(1, as: Int64.self))
        }
        return columns.map { types[$0] ?? 0 }
    }

    /// SQLite: the rows as `INSERT`s in batches of 10,000 (``executeMany(_:parameterSets:)``), inside one
    /// transaction (a savepoint inside the caller's), so that the copy is all or nothing.
    private func insertInBatches(
        into table: String, columnList: String, columnCount: Int, next: () async throws -> [SQLValue]?
    ) async throws -> Int {
        let sql = "INSERT INTO \(table) (\(columnList)) VALUES (\(Array(repeating: "?", count: columnCount).joined(separator: ", ")))"
        return try await withTransaction { connection in
            var copied = 0
            var number = 0
            var batch: [[SQLValue]] = []
            batch.reserveCapacity(10_000)
            while let row = try await next() {
                number += 1
                guard row.count == columnCount else {
                    throw SQLError(.misuse, "row \(number) has \(row.count) values for the \(columnCount) columns", sql: sql)
                }
                batch.append(row)
                if batch.count == 10_000 {
                    copied += try await connection.executeMany(text: sql, sets: batch).rowsAffected
                    batch.removeAll(keepingCapacity: true)
                }
            }
            if !batch.isEmpty { copied += try await connection.executeMany(text: sql, sets: batch).rowsAffected }
            return copied
        }
    }

    /// The PostgreSQL connection behind this one, for a raw COPY.
    private func copyDriver(_ sql: String) throws(SQLError) -> PostgresConnection {
        try checkOpen(sql)
        guard let postgres = driver as? PostgresConnection else {
            throw SQLError(.misuse, "COPY is PostgreSQL's; on SQLite, copy(_:into:columns:) inserts rows in batches", sql: sql)
        }
        return postgres
    }
}
