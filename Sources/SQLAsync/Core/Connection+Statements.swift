extension Connection {
    /// Runs a statement built with the query builder, compiled for this connection's database.
    ///
    /// ```swift
    /// let names = try await connection.execute(
    ///     select(Users.name).from(Users.self).where(Users.age >= 18).orderBy(Users.name.asc())
    /// ).scalars(String.self)
    /// ```
    ///
    /// - Parameters:
    ///   - statement: a statement of the query builder.
    ///   - parameters: values of the statement's named ``Parameter``s.
    /// - Throws: ``SQLError`` (``SQLError/Kind/misuse`` for a statement built inconsistently or a named
    ///   parameter without a value); `CancellationError`.
    @discardableResult
    public func execute(_ statement: some SQLStatement, parameters: [String: any SQLBindable] = [:]) async throws -> QueryResult {
        try await execute(try statement.sql(for: dialect), parameters: parameters)
    }

    /// Runs a statement compiled once with ``SQLStatement/compiled()``: no building or rendering per call.
    @discardableResult
    public func execute(_ statement: CompiledStatement, parameters: [String: any SQLBindable] = [:]) async throws -> QueryResult {
        let form = statement.form(dialect)
        return try await execute(text: form.text, binds: try form.sql.binds(parameters.mapValues(\.sqlValue)))
    }
}
