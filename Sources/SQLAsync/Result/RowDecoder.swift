extension Row {
    /// Decodes the row into `T`, matching its coding keys to column names.
    ///
    /// ```swift
    /// struct User: Decodable { let id: Int; let name: String; let email: String? }
    /// let users = try result.decode(User.self)
    /// ```
    ///
    /// Properties decode through ``SQLDecodable`` where the type has it; other `Decodable` types (`UUID`, a
    /// `RawRepresentable` enum…) decode from the column's single value. Optional properties take NULL or a
    /// missing column as `nil`.
    ///
    /// - Throws: ``SQLError/Kind/decoding`` naming the column: a missing column for a required property, a
    ///   NULL into a non-optional, a value of the wrong type or out of range.
    public func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try T(from: RowDecoder(row: self))
    }
}

extension QueryResult {
    /// Every row decoded into `T`; see ``Row/decode(_:)``.
    public func decode<T: Decodable>(_ type: T.Type) throws -> [T] {
        var values: [T] = []
        values.reserveCapacity(count)
        for row in self { values.append(try row.decode(T.self)) }
        return values
    }
}

/// Decodes a whole row: keyed by column name, or positionally.
struct RowDecoder: Decoder {
    let row: Row
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        KeyedDecodingContainer(RowKeyedContainer<Key>(row: row))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer { RowUnkeyedContainer(row: row) }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        guard row.values.count == 1 else {
            throw SQLError(.decoding, "a single value needs a one-column row; this one has \(row.values.count)")
        }
        return ValueDecoder(value: row.values[0], column: row.columns[0])
    }
}

/// Decodes one value of a column: the single-value container of nested `Decodable` types such as `UUID`.
struct ValueDecoder: Decoder, SingleValueDecodingContainer {
    let value: SQLValue
    let column: String
    var codingPath: [any CodingKey] { [] }
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        throw SQLError(.decoding, "column '\(column)' holds one value; it cannot decode a keyed type")
    }
    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw SQLError(.decoding, "column '\(column)' holds one value; it cannot decode a list")
    }
    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { value == .null }
    func decode(_ type: Bool.Type) throws -> Bool { try Bool(sqlValue: value, column: column) }
    func decode(_ type: String.Type) throws -> String { try String(sqlValue: value, column: column) }
    func decode(_ type: Double.Type) throws -> Double { try Double(sqlValue: value, column: column) }
    func decode(_ type: Float.Type) throws -> Float { try Float(sqlValue: value, column: column) }
    func decode(_ type: Int.Type) throws -> Int { try Int(sqlValue: value, column: column) }
    func decode(_ type: Int8.Type) throws -> Int8 { try Int8(sqlValue: value, column: column) }
    func decode(_ type: Int16.Type) throws -> Int16 { try Int16(sqlValue: value, column: column) }
    func decode(_ type: Int32.Type) throws -> Int32 { try Int32(sqlValue: value, column: column) }
    func decode(_ type: Int64.Type) throws -> Int64 { try Int64(sqlValue: value, column: column) }
    func decode(_ type: UInt.Type) throws -> UInt { try unsigned(UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try unsigned(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try unsigned(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try unsigned(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try unsigned(UInt64.self) }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        if let decodable = T.self as? any SQLDecodable.Type, let value = try decodable.init(sqlValue: value, column: column) as? T {
            return value
        }
        return try T(from: self)
    }

    private func unsigned<T: FixedWidthInteger & UnsignedInteger>(_ type: T.Type) throws -> T {
        let wide = try Int64(sqlValue: value, column: column)
        guard let narrow = T(exactly: wide) else {
            throw SQLError(.decoding, "column '\(column)' holds \(wide), which is out of range for \(T.self)")
        }
        return narrow
    }
}

/// Properties by column name.
struct RowKeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let row: Row
    var codingPath: [any CodingKey] { [] }
    var allKeys: [Key] { row.columns.compactMap(Key.init(stringValue:)) }

    func contains(_ key: Key) -> Bool { row[key.stringValue] != nil }

    private func value(_ key: Key) throws -> ValueDecoder {
        guard let value = row[key.stringValue] else {
            throw SQLError(
                .decoding,
                "the row has no column '\(key.stringValue)' (it has \(row.columns.joined(separator: ", ")))")
        }
        return ValueDecoder(value: value, column: key.stringValue)
    }

    func decodeNil(forKey key: Key) throws -> Bool { row[key.stringValue].map { $0 == .null } ?? true }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try value(key).decode(type) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try value(key).decode(type) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try value(key).decode(type) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try value(key).decode(type) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try value(key).decode(type) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try value(key).decode(type) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try value(key).decode(type) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try value(key).decode(type) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try value(key).decode(type) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try value(key).decode(type) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try value(key).decode(type) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try value(key).decode(type) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try value(key).decode(type) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try value(key).decode(type) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try value(key).decode(type) }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        throw SQLError(.decoding, "column '\(key.stringValue)' holds one value; it cannot decode a keyed type")
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        throw SQLError(.decoding, "column '\(key.stringValue)' holds one value; it cannot decode a list")
    }
    func superDecoder() throws -> any Decoder { RowDecoder(row: row) }
    func superDecoder(forKey key: Key) throws -> any Decoder { try value(key) }
}

/// Columns in order, for tuples-like types decoded positionally.
struct RowUnkeyedContainer: UnkeyedDecodingContainer {
    let row: Row
    var codingPath: [any CodingKey] { [] }
    var count: Int? { row.values.count }
    var currentIndex = 0
    var isAtEnd: Bool { currentIndex >= row.values.count }

    private mutating func next() throws -> ValueDecoder {
        guard !isAtEnd else {
            throw SQLError(.decoding, "the row has only \(row.values.count) columns")
        }
        defer { currentIndex += 1 }
        return ValueDecoder(value: row.values[currentIndex], column: row.columns[currentIndex])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd, row.values[currentIndex] == .null else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decode(type) }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        throw SQLError(.decoding, "a column holds one value; it cannot decode a keyed type")
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        throw SQLError(.decoding, "a column holds one value; it cannot decode a list")
    }
    mutating func superDecoder() throws -> any Decoder { try next() }
}
