// Relationships at flush: the save-update and delete cascades, orphans, foreign keys set from related
// objects, many-to-many association rows.

extension Session {
    // MARK: Relationships at flush

    /// The save-update cascade (to a fixed point: objects added bring theirs), then removed members: orphans
    /// deleted or their foreign key cleared.
    func prepareRelationships() throws {
        // Index loops: the cascades append entries (objects they add) and flag others while they run.
        var index = 0
        while index < entries.count {
            if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                entries[index].info.operations.cascadeSave(entries[index].object, self)
            }
            index += 1
        }
        // Objects some live owner holds: taken out of one collection and put in another, a child is moved,
        // not orphaned.
        held.removeAll(keepingCapacity: true)
        for index in entries.indices where !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
            for object in entries[index].info.operations.heldObjects(entries[index].object) { held.insert(ObjectIdentifier(object)) }
        }
        index = 0
        while index < entries.count {
            if !entries[index].detached && relations[ObjectIdentifier(entries[index].object)] != nil {
                try entries[index].info.operations.handleRemoved(entries[index].object, self)
            }
            index += 1
        }
    }

    /// The delete cascade: children of deleted objects, loaded when they are not (one query per relationship
    /// and type), deleted too — to a fixed point.
    func cascadeDeletes(isolation: isolated (any Actor)? = #isolation) async throws {
        var done = Set<ObjectIdentifier>()
        while true {
            var groups: [ObjectIdentifier: (info: ModelInfo, objects: [AnyObject])] = [:]
            for index in entries.indices where entries[index].deleted && !entries[index].detached && entries[index].info.cascadesDeletes
                && done.insert(ObjectIdentifier(entries[index].object)).inserted {
                let info = entries[index].info
                groups[ObjectIdentifier(info), default: (info, [])].objects.append(entries[index].object)
            }
            if groups.isEmpty { return }
            for (info, objects) in groups.values {
                try await info.operations.cascadeDelete(objects, self, isolation: isolation)
            }
        }
    }

    /// Sets foreign keys from relationships (a child's key from its parent's, which an insert may just have
    /// generated). Relationships changed since their load go last, so that where a child's parent
    /// (many-to-one) and a parent's collection (one-to-many) disagree about the same foreign key, the side
    /// that was changed wins: a child moved to another collection is moved even though its own `parent` still
    /// holds the old one, and the reverse.
    func synchronizeKeys() throws {
        for changed in [false, true] {
            var index = 0
            while index < entries.count {
                if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                    try entries[index].info.operations.synchronize(entries[index].object, self, changed: changed)
                }
                index += 1
            }
        }
    }

    /// The many-to-many association rows to insert and delete.
    func linkChanges() throws -> [LinkChange] {
        var changes: [LinkChange] = []
        var index = 0
        while index < entries.count {
            if !entries[index].detached && entries[index].info.hasRelationships {
                let entry = entries[index]
                changes += try entry.info.operations.linkChanges(
                    entry.object, deleted: entry.deleted, persistent: entry.store >= 0, self)
            }
            index += 1
        }
        return changes
    }

    /// Remembers what every loaded relationship holds, for the next flush to compare with.
    func recordRelationships() {
        var index = 0
        while index < entries.count {
            if !entries[index].deleted && !entries[index].detached && entries[index].info.hasRelationships {
                entries[index].info.operations.record(entries[index].object, self)
            }
            index += 1
        }
    }

    /// Records what a relationship of a tracked owner holds now (after a load or a flush).
    func record(_ owner: AnyObject, _ property: AnyKeyPath, _ related: [AnyObject]) {
        guard index(of: owner) != nil else { return }
        relations[ObjectIdentifier(owner), default: [:]][property] = related
    }

    /// What a relationship of a tracked owner held at its load or the last flush (nil: never loaded through
    /// the session).
    func recorded(_ owner: AnyObject, _ property: AnyKeyPath) -> [AnyObject]? {
        index(of: owner) == nil ? nil : relations[ObjectIdentifier(owner)]?[property]
    }

    /// Sets a column of a tracked or new object (a foreign key): through its encoding and
    /// ``Model/update(from:)``; nothing when it already holds the value.
    func set<M: Model>(_ name: String, of object: M, to value: SQLValue) throws {
        var values = object.encoded()
        guard values[name] != value else { return }
        values[name] = value
        try object.update(from: values.row)
    }
}
