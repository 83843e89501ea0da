// The one lock type of the package: every target locks through `Locked<Value>`, never through `Mutex`
// directly (scripts/check-rules.sh enforces it).
//
// Why a type of our own: ThreadSanitizer does not see `Synchronization.Mutex` on Linux (it locks with futex
// system calls TSan does not intercept), so a correctly locked counter is reported as a race and real races
// drown among false ones. Built with `-Xswiftc -DANYRUNTIME_PTHREAD_LOCKS` (scripts/sanitizers.sh does), every
// lock is a pthread mutex, which both sanitizers understand. Otherwise `Locked` *is* `Mutex`: a type alias,
// no wrapper, no cost.
#if ANYRUNTIME_PTHREAD_LOCKS
#if canImport(Glibc)
public import Glibc
#elseif canImport(Musl)
public import Musl
#elseif canImport(Darwin)
public import Darwin
#endif

/// A value protected by a pthread mutex, with `Synchronization.Mutex`'s interface (sanitizer builds only).
@usableFromInline
package typealias Locked<Value: ~Copyable> = PthreadLocked<Value>

/// `Mutex`'s interface over a pthread mutex, for sanitizer builds.
///
/// Sendable for the same reason `Mutex` is: the value is reached only inside `withLock`, while the mutex is
/// held, and it enters and leaves only as a `sending` value, so no other reference to it escapes the lock.
/// The mutex and the value live in allocations of their own, whose addresses never change while the struct
/// (which is not copyable) is alive; its `deinit` runs once, when no thread can be inside `withLock`.
@usableFromInline @frozen
package struct PthreadLocked<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let value: UnsafeMutablePointer<Value>

    @inlinable
    package init(_ initialValue: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        value = .allocate(capacity: 1)
        value.initialize(to: initialValue)
    }

    @inlinable
    deinit {
        value.deinitialize(count: 1)
        value.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable
    package borrowing func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }

    @inlinable
    package borrowing func withLockIfAvailable<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result? {
        guard pthread_mutex_trylock(mutex) == 0 else { return nil }
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value.pointee)
    }
}
#else
public import Synchronization

/// The package's lock: `Synchronization.Mutex` (a pthread mutex in sanitizer builds, see above).
@usableFromInline
package typealias Locked<Value: ~Copyable> = Mutex<Value>
#endif
