// The identity map: one tracked object per primary key, and the entries that record each tracked object.

extension Session {
    // MARK: Bookkeeping

    /// A model type and a primary key. A one-column integer key (the usual case) is held and hashed as a
    /// plain integer: no array, no enum to switch on.
    struct IdentityKey: Hashable {
        let type: ObjectIdentifier
        /// The key when it is one integer column.
        let integer: Int64
        /// Any other key's values (nil for a one-integer key).
        let values: [SQLValue]?

        init(_ type: Any.Type, _ key: [SQLValue]) {
            if key.count == 1, case .integer(let value) = key[0] {
                self.init(type, integer: value, values: nil)
            } else {
                self.init(type, integer: 0, values: key)
            }
        }

        /// A one-integer key.
        init(_ type: Any.Type, integer: Int64) { self.init(type, integer: integer, values: nil) }

        private init(_ type: Any.Type, integer: Int64, values: [SQLValue]?) {
            self.type = ObjectIdentifier(type)
            self.integer = integer
            self.values = values
        }

        /// The key in a row, at `indexes` (a missing column is NULL); no array for a one-integer key.
        init(_ type: Any.Type, row: borrowing Row, _ indexes: [Int?]) {
            if indexes.count == 1, let index = indexes[0], index >= 0, index < row.columns.count,
                case .integer(let value) = row.storage[row.offset + index] {
                self.init(type, integer: value, values: nil)
            } else {
                self.init(type, indexes.map { index in index.flatMap { row[$0] } ?? .null })
            }
        }

        var hasNull: Bool { values?.contains(.null) ?? false }

        static func == (lhs: IdentityKey, rhs: IdentityKey) -> Bool {
            lhs.type == rhs.type && lhs.integer == rhs.integer && lhs.values == rhs.values
        }

        func hash(into hasher: inout Hasher) {
            hasher.combine(type)
            if let values { hasher.combine(values) } else { hasher.combine(integer) }
        }
    }

    enum KeyKind: UInt8 {
        case none, integer, other
    }

    /// The identity-map key of an entry.
    func key(of index: Int) -> IdentityKey? {
        switch entries[index].keyKind {
        case .none: nil
        case .integer: IdentityKey(entries[index].info.type, integer: entries[index].keyInteger)
        case .other: otherKeys[ObjectIdentifier(entries[index].object)]
        }
    }

    /// Maps `key` to an entry. An entry the map had under that key (its row changed or deleted behind the
    /// session's back) loses it, so that no later rebuild of the map gives the key back to it.
    func assign(_ key: IdentityKey, to index: Int) {
        if let previous = byKey[key], previous != index, previous < entries.count {
            entries[previous].keyKind = .none
            otherKeys[ObjectIdentifier(entries[previous].object)] = nil
        }
        setKey(of: index, key)
        byKey[key] = index
    }

    func setKey(of index: Int, _ key: IdentityKey) {
        let id = ObjectIdentifier(entries[index].object)
        if key.values == nil {
            entries[index].keyKind = .integer
            entries[index].keyInteger = key.integer
            otherKeys[id] = nil
        } else {
            entries[index].keyKind = .other
            otherKeys[id] = key
        }
    }

    /// Primary key → entry index, for every tracked object with a key.
    struct IdentityMap {
        /// One-integer keys (the usual case), a map per model type: the one used last is held apart, so that a
        /// loop over one type's rows hashes a plain integer once per row.
        private var integers: [ObjectIdentifier: [Int64: Int]] = [:]
        private var hotType: ObjectIdentifier?
        private var hot: [Int64: Int] = [:]
        /// Every other key.
        private var others: [IdentityKey: Int] = [:]

        /// Makes `type`'s map the one held apart.
        private mutating func select(_ type: ObjectIdentifier) {
            guard hotType != type else { return }
            if let hotType { integers[hotType] = hot }
            hot = integers.removeValue(forKey: type) ?? [:]
            hotType = type
        }

        subscript(key: IdentityKey) -> Int? {
            get {
                if key.values != nil { return others[key] }
                return key.type == hotType ? hot[key.integer] : integers[key.type]?[key.integer]
            }
            set {
                if key.values != nil {
                    others[key] = newValue
                } else {
                    select(key.type)
                    hot[key.integer] = newValue
                }
            }
        }

        /// The index `key` has, or — when it has none — nil, `key` now mapped to `index`: one hash and probe for
        /// a new key (the usual case). (`map[key, default:]` would allocate its autoclosure.)
        mutating func claim(_ key: IdentityKey, for index: Int) -> Int? {
            if key.values == nil { return claim(key.type, key.integer, for: index) }
            guard let old = others.updateValue(index, forKey: key) else { return nil }
            others[key] = old
            return old
        }

        /// ``claim(_:for:)`` of the one-integer key `integer` of `type`.
        mutating func claim(_ type: ObjectIdentifier, _ integer: Int64, for index: Int) -> Int? {
            select(type)
            guard let old = hot.updateValue(index, forKey: integer) else { return nil }
            hot[integer] = old
            return old
        }

        /// Room for `count` more one-integer keys of `type`.
        mutating func reserveCapacity(adding count: Int, of type: Any.Type) {
            select(ObjectIdentifier(type))
            hot.reserveCapacity(hot.count + count)
        }

        mutating func removeAll() {
            integers.removeAll(keepingCapacity: true)
            hot.removeAll(keepingCapacity: true)
            others.removeAll(keepingCapacity: true)
        }
    }

    /// One tracked object: a value stored inline in the session's array (no allocation of its own).
    struct Entry {
        let object: AnyObject
        /// Its model's operations and table, shared by the model's entries. Not retained per entry:
        /// `unowned(unsafe)` is safe because every `ModelInfo` is created by ``Session/info(_:)`` and held by
        /// the session's `models` until the session itself goes, and entries live only in the session's
        /// private `entries` array (no entry or copy of one is ever handed out), so no entry outlives its info.
        unowned(unsafe) let info: ModelInfo
        /// Its snapshot, the values last read or written: row `offset` of `stores[store]` (-1: none, an object
        /// still to insert). A result's rows share one store.
        var store = -1
        var offset = 0
        /// Whether `stores[store]` is this entry's alone (replaced in place when the snapshot changes).
        var ownsStore = false
        /// Whether the snapshot is in the model's own encoding (else it is the row as the database returned
        /// it, which may encode a value differently: an integer for a `Bool` in SQLite, say).
        var canonical = true
        /// The key the identity map has it under: none until it is loaded or inserted; one integer, held here;
        /// or another key, held in the session's `otherKeys`. (Only `object` is reference-counted: an entry
        /// is copied and destroyed with one retain or release.)
        var keyKind = KeyKind.none
        var keyInteger: Int64 = 0
        var deleted = false
        /// No longer tracked (forgotten, deleted and flushed); dropped at the next compaction.
        var detached = false

        init(_ object: AnyObject, _ info: ModelInfo) {
            self.object = object
            self.info = info
        }

        init(
            _ object: AnyObject, _ info: ModelInfo, keyKind: KeyKind, keyInteger: Int64, store: Int, offset: Int, ownsStore: Bool,
            canonical: Bool
        ) {
            self.object = object
            self.info = info
            self.keyKind = keyKind
            self.keyInteger = keyInteger
            self.store = store
            self.offset = offset
            self.ownsStore = ownsStore
            self.canonical = canonical
        }
    }
}
