//! The near cache (L1): a bounded in-process copy of Redis values.
//!
//! Three rules make it safe to serve from:
//! - every entry expires by its own deadline, never later than the key's remaining Redis TTL;
//! - a flush is O(1): entries carry the generation they were filled in, and bumping the
//!   generation makes all of them unreachable at once (Redis's docs tell clients to flush on
//!   any doubt, so flushing must be cheap);
//! - a fill that raced an invalidation of the same key never installs the old value: each key
//!   hashes to a stripe counter that every invalidation bumps, and a fill installs only if the
//!   counter it read before going to Redis is unchanged after installing (rueidis and Redis's
//!   client-side caching docs guard the same race with a placeholder).
//!
//! Entries are keyed by the user's key, not the Redis key: one cache is one namespace, so the
//! hit path looks up the caller's `&str` as is instead of building `P:key` on every `get`. The
//! methods that take a Redis key (fills, invalidations from the wire) strip the prefix.
//!
//! In front of the shared map, each thread keeps the entries it hit last (see [`front`]): a hot
//! key is then served without the map's shard lock, checked against the same generation, key
//! version and deadline as the map's copy.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Weighter};

/// The hit path's clock. A precise `Instant::now()` (CLOCK_MONOTONIC through the vDSO) costs
/// 25-60 ns on this project's VMs, as much as the rest of a hit; CLOCK_MONOTONIC_COARSE costs a
/// third of that. It is the same timeline read at the last timekeeping update, so it is never
/// ahead of the precise clock and lags it by at most a few ticks (the kernel forces an update
/// after 5 stalled jiffies, e.g. a vCPU held by the hypervisor). Deadlines are computed from
/// the precise clock and brought forward by [`clock::margin`] (6 ticks: 24 ms at HZ=250), and a
/// hit compares them with the coarse clock: an entry may expire up to the margin early, never
/// late.
pub(crate) mod clock {
    #[cfg(target_os = "linux")]
    fn read(id: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
            return None;
        }
        Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
    }

    /// Nanoseconds on CLOCK_MONOTONIC; 0 if the clock cannot be read (deadlines then lie in
    /// the past: nothing is served).
    #[cfg(target_os = "linux")]
    pub fn precise() -> u64 {
        read(libc::CLOCK_MONOTONIC).unwrap_or(0)
    }

    /// A lower bound of [`precise`] (within [`margin`]); `u64::MAX` if unreadable, so that
    /// every entry counts as expired.
    #[cfg(target_os = "linux")]
    pub fn coarse() -> u64 {
        read(libc::CLOCK_MONOTONIC_COARSE).unwrap_or(u64::MAX)
    }

    /// How far the coarse clock may lag the precise one.
    #[cfg(target_os = "linux")]
    pub fn margin() -> u64 {
        static MARGIN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        *MARGIN.get_or_init(|| {
            let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: `res` is a valid, writable timespec.
            let tick = if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0 {
                res.tv_sec as u64 * 1_000_000_000 + res.tv_nsec as u64
            } else {
                10_000_000 // HZ=100, the coarsest common kernel
            };
            6 * tick.clamp(1_000_000, 10_000_000)
        })
    }

    #[cfg(not(target_os = "linux"))]
    fn base() -> std::time::Instant {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(std::time::Instant::now)
    }

    #[cfg(not(target_os = "linux"))]
    pub fn precise() -> u64 {
        base().elapsed().as_nanos() as u64
    }

    #[cfg(not(target_os = "linux"))]
    pub fn coarse() -> u64 {
        precise()
    }

    #[cfg(not(target_os = "linux"))]
    pub fn margin() -> u64 {
        0
    }

    /// The last nanosecond an entry whose TTL started at `start` (precise) may be served at, on
    /// the coarse clock: 0 (already expired) when the TTL is within the margin.
    pub fn deadline(start: u64, ttl: std::time::Duration) -> u64 {
        start.saturating_add(ttl.as_nanos().min(u64::MAX as u128) as u64).saturating_sub(margin())
    }
}

const STRIPES: usize = 4096;

/// One hash of a user key serves both its stripe and its slot in [`front`]. foldhash with a
/// fixed seed: a few ns on short keys where the FNV-1a used before took a multiply per byte, and
/// the stripes need no per-process seed (they only spread counters).
#[inline]
fn key_hash(key: &str) -> u64 {
    foldhash::fast::FixedState::with_seed(0x243f_6a88_85a3_08d3).hash_one(key)
}

#[inline]
fn stripe_of(hash: u64) -> usize {
    hash as usize % STRIPES
}

/// Tells apart the caches of one process in the per-thread [`front`].
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);
/// Per-entry bookkeeping charged against the byte budget (table slot, Arc headers).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Clone)]
struct Entry {
    value: Bytes,
    generation: u64,
    /// On the coarse clock; see [`clock`].
    expires_at: u64,
}

/// Bytes an entry is charged: its key, value and bookkeeping, but at least `floor`, so the
/// byte budget also caps the entry count.
#[derive(Clone)]
struct EntryWeight {
    floor: u64,
}

impl Weighter<Arc<str>, Entry> for EntryWeight {
    fn weight(&self, k: &Arc<str>, v: &Entry) -> u64 {
        ((k.len() + v.value.len() + ENTRY_OVERHEAD) as u64).max(self.floor)
    }
}

/// How the hit path looks a key up: it hashes exactly as `str` does (so it finds the `Arc<str>`
/// keys), but compares keys of up to 16 bytes inline. `str`'s `==` calls `memcmp`, a call and a
/// length dispatch that were ~6% of a hit in a profile of `examples/l1hit`.
struct Probe<'a>(&'a str);

impl std::hash::Hash for Probe<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h)
    }
}

impl Equivalent<Arc<str>> for Probe<'_> {
    #[inline]
    fn equivalent(&self, key: &Arc<str>) -> bool {
        same_bytes(self.0.as_bytes(), key.as_bytes())
    }
}

/// `a == b`, with inputs of up to 16 bytes compared by two overlapping loads each (three
/// bytes below 4).
#[inline]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w8 = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().unwrap());
    let w4 = |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().unwrap());
    match n {
        8..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        4..=7 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        0 => true,
        _ => a == b,
    }
}

/// Proof that a fill started before a given point; see [`NearCache::begin_fill`].
#[derive(Clone, Copy, Debug)]
pub struct FillToken {
    stripe: usize,
    counter: u64,
    generation: u64,
    /// When the fill started (precise clock): the Redis TTL it reads runs from some point
    /// after this, so an entry's deadline counted from here never outlives the key in Redis.
    started: u64,
}

pub struct NearCache {
    /// Keyed by the user's key (the Redis key without `key_prefix`).
    map: Cache<Arc<str>, Entry, EntryWeight>,
    /// What the Redis key of every user key starts with (`P:` with a namespace, else empty).
    key_prefix: Box<str>,
    generation: AtomicU64,
    stripes: Box<[AtomicU64]>,
    /// Per stripe, bumped after every insert into or removal from the map of a key in it (what
    /// a [`front`] copy checks). Separate from `stripes`, whose bumps come before the change and
    /// whose every bump drops a racing fill.
    versions: Box<[AtomicU64]>,
    /// False while the invalidation stream cannot be trusted (subscription down): reads must
    /// then go to Redis.
    serving: AtomicBool,
    max_value_bytes: usize,
    /// This cache's slots in the per-thread [`front`] carry it.
    id: u64,
}

impl NearCache {
    /// Bounded by both `max_entries` and `max_bytes`: each entry weighs at least
    /// `max_bytes / max_entries`, so the byte budget also caps the count.
    ///
    /// quick_cache (S3-FIFO: scan-resistant, hit ratios on par with TinyLFU) rather than moka:
    /// measured here, moka's get cost ~400 ns and insert ~1.4 us, too much for a hit path that
    /// must be 100x cheaper than a Redis round trip. It has no TTLs, so each entry carries its
    /// deadline and expired entries are dropped when read or evicted by the budget.
    pub fn new(max_entries: u64, max_bytes: u64) -> Self {
        let floor = (max_bytes / max_entries.max(1)).max(1);
        let estimated = max_entries.min(max_bytes / ENTRY_OVERHEAD as u64).clamp(16, 1 << 20) as usize;
        let map = Cache::with_weighter(estimated, max_bytes, EntryWeight { floor });
        NearCache {
            map,
            key_prefix: "".into(),
            generation: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            versions: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            serving: AtomicBool::new(false),
            // One value may use at most an eighth of the budget, so one huge value cannot
            // evict everything else.
            max_value_bytes: (max_bytes / 8) as usize,
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn stripe(key: &str) -> usize {
        stripe_of(key_hash(key))
    }

    /// Keys are stored without `prefix` (the Redis key of the user key `k` is `prefix + k`).
    pub fn with_key_prefix(mut self, prefix: &str) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The user key of a Redis key; `None` for a key outside this cache's namespace, which
    /// nothing here can hold.
    fn local<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(&*self.key_prefix)
    }

    /// The value of a Redis key.
    #[allow(dead_code)]
    pub fn get(&self, redis_key: &str) -> Option<Bytes> {
        self.get_local(self.local(redis_key)?)
    }

    /// The hot path, by user key: no allocation beyond the `Bytes` refcount, no I/O, no
    /// precise clock read, and for a key this thread hit last, no lock.
    #[inline]
    pub fn get_local(&self, key: &str) -> Option<Bytes> {
        if !self.serving.load(Ordering::Acquire) {
            return None;
        }
        let hash = key_hash(key);
        let generation = self.generation.load(Ordering::Acquire);
        let version = &self.versions[stripe_of(hash)];
        let now = clock::coarse();
        let copy = match front::lookup(self.id, hash, key, generation, version, now) {
            front::Lookup::Hit(v) => return Some(v),
            // Read before the map: a change to the key's entry (or a flush, for the generation
            // read above) that lands after this point moves it on, so a copy taken from what
            // the map answers below dies with that change.
            front::Lookup::Copy => Some(version.load(Ordering::Acquire)),
            front::Lookup::Pass => None,
        };
        let e = self.map.get(&Probe(key))?;
        if e.generation != generation || e.expires_at <= now {
            // Dead weight: free the budget now rather than at eviction.
            self.map.remove(key);
            return None;
        }
        if let Some(version) = copy {
            front::copy(self.id, hash, key, generation, version, e.expires_at, &e.value);
        }
        Some(e.value)
    }

    /// Call before reading `key` from Redis; pass the token to [`complete_fill`](Self::complete_fill).
    pub fn begin_fill(&self, redis_key: &str) -> FillToken {
        let stripe = Self::stripe(self.local(redis_key).unwrap_or(redis_key));
        FillToken {
            stripe,
            counter: self.stripes[stripe].load(Ordering::Acquire),
            generation: self.generation.load(Ordering::Acquire),
            started: clock::precise(),
        }
    }

    /// Installs a value read from Redis unless an invalidation or flush happened since the
    /// token was taken. `ttl` runs from when the token was taken. Returns whether the value
    /// is now cached.
    pub fn complete_fill(&self, token: FillToken, redis_key: &str, value: Bytes, ttl: Duration) -> bool {
        let Some(key) = self.local(redis_key) else { return false };
        let expires_at = clock::deadline(token.started, ttl);
        if !self.serving.load(Ordering::Acquire) || value.len() > self.max_value_bytes || expires_at <= clock::precise() {
            return false;
        }
        let unchanged = |s: &Self| {
            s.stripes[token.stripe].load(Ordering::Acquire) == token.counter
                && s.generation.load(Ordering::Acquire) == token.generation
        };
        if !unchanged(self) {
            return false;
        }
        let key: Arc<str> = Arc::from(key);
        self.map.insert(key.clone(), Entry { value, generation: token.generation, expires_at });
        self.changed(token.stripe);
        // An invalidation may have landed between the check and the insert; re-checking after
        // the insert closes that window (the invalidation's own removal happens after its bump).
        if !unchanged(self) {
            self.map.remove(&key);
            self.changed(token.stripe);
            return false;
        }
        true
    }

    /// The writer's own new value (read-your-writes). Bumps the stripe first so that a fill of
    /// the previous value that is still in flight cannot overwrite it.
    #[allow(dead_code)]
    pub fn put_own_write(&self, redis_key: &str, value: Bytes, ttl: Duration) {
        self.put_own_write_since(redis_key, value, ttl, clock::precise());
    }

    /// [`put_own_write`](Self::put_own_write) for a write whose TTL started at `started`
    /// (`clock::precise()` taken before the SET was sent).
    pub fn put_own_write_since(&self, redis_key: &str, value: Bytes, ttl: Duration, started: u64) {
        let Some(key) = self.local(redis_key) else { return };
        let stripe = self.bump(key);
        let expires_at = clock::deadline(started, ttl);
        if value.len() > self.max_value_bytes || expires_at <= clock::precise() {
            self.map.remove(key);
        } else {
            let generation = self.generation.load(Ordering::Acquire);
            self.map.insert(Arc::from(key), Entry { value, generation, expires_at });
        }
        self.changed(stripe);
    }

    /// Before a key's entry changes: a fill of the key in flight will not install.
    fn bump(&self, key: &str) -> usize {
        let stripe = Self::stripe(key);
        self.stripes[stripe].fetch_add(1, Ordering::AcqRel);
        stripe
    }

    /// After a key's entry changed: per-thread copies of it are no longer served.
    fn changed(&self, stripe: usize) {
        self.versions[stripe].fetch_add(1, Ordering::AcqRel);
    }

    /// Drops a Redis key (a received invalidation or a local delete). Never touches Redis.
    pub fn invalidate(&self, redis_key: &str) {
        let Some(key) = self.local(redis_key) else { return };
        let stripe = self.bump(key);
        self.map.remove(key);
        self.changed(stripe);
    }

    /// Makes every entry unreachable in O(1); memory is reclaimed lazily (on read, or by
    /// eviction).
    pub fn flush(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Stops serving (and flushes) until [`resume`](Self::resume): used while invalidations
    /// may be getting lost.
    pub fn suspend(&self) {
        self.serving.store(false, Ordering::Release);
        self.flush();
    }

    /// Serves again, starting empty.
    pub fn resume(&self) {
        self.flush();
        self.serving.store(true, Ordering::Release);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Entries held, including unreachable ones not yet reclaimed.
    pub fn entry_count(&self) -> u64 {
        self.map.len() as u64
    }

    /// Bytes charged against the budget.
    #[cfg(test)]
    pub fn weighted_size(&self) -> u64 {
        self.map.weight()
    }
}

/// Each thread's copies of the entries it hit last: a small direct-mapped table in a
/// thread-local, read without any lock or read-modify-write.
///
/// A copy is served only while nothing that changes what the map would answer has happened:
/// the cache's generation (flush, suspend) and the key's stripe version are unchanged, and the
/// entry's deadline has not passed. The version is bumped after every insert and removal of a
/// key of the stripe (invalidation, own write, fill), and both counters are read before the map
/// is (see `get_local`): a copy of what the map held just before a change dies with the bump
/// that follows the change. An eviction bumps nothing: the copy then lives on as the map's
/// entry would have, until the next change of the key (a fill included, so reads stay
/// monotonic across threads).
///
/// What it costs: an L1 hit on a key in a thread's front skips the map's shard lock and
/// probe (about a third of a hit). Memory outside the byte budget: at most `SLOTS` keys of up
/// to `MAX_KEY` bytes and values of up to `MAX_VALUE` bytes per thread that has served hits,
/// held until the slot is reused or the thread exits (also after their cache is dropped).
mod front {
    use super::*;
    use std::cell::RefCell;

    const SLOTS: usize = 64;
    const MAX_KEY: usize = 128;
    const MAX_VALUE: usize = 1024;

    struct Slot {
        /// 0: empty (cache ids start at 1).
        cache: u64,
        hash: u64,
        /// The hash of the last key that missed here.
        candidate: u64,
        generation: u64,
        version: u64,
        expires_at: u64,
        key: Vec<u8>,
        value: Bytes,
    }

    const EMPTY: Slot = Slot {
        cache: 0,
        hash: 0,
        candidate: 0,
        generation: 0,
        version: 0,
        expires_at: 0,
        key: Vec::new(),
        value: Bytes::new(),
    };

    thread_local! {
        // Const-initialized: no lazy-init check on the hit path.
        static TABLE: RefCell<[Slot; SLOTS]> = const { RefCell::new([EMPTY; SLOTS]) };
    }

    #[inline]
    fn index(hash: u64) -> usize {
        // The high bits: the low ones pick the stripe.
        (hash >> 58) as usize % SLOTS
    }

    pub(super) enum Lookup {
        Hit(Bytes),
        /// Not served here; copy what the map answers (the key missed this slot twice in a row,
        /// or its copy is out of date).
        Copy,
        /// Not served here; leave the slot alone.
        Pass,
    }

    #[inline]
    pub(super) fn lookup(cache: u64, hash: u64, key: &str, generation: u64, version: &AtomicU64, now: u64) -> Lookup {
        TABLE
            .try_with(|t| {
                // A value's drop (in `copy`) may run a `Bytes` owner's code that reads the cache
                // again on this thread: such a nested lookup goes to the map.
                let Ok(mut t) = t.try_borrow_mut() else { return Lookup::Pass };
                let s = &mut t[index(hash)];
                if s.cache == cache && s.hash == hash && same_bytes(&s.key, key.as_bytes()) {
                    if s.version == version.load(Ordering::Acquire) && s.generation == generation && s.expires_at > now {
                        return Lookup::Hit(s.value.clone());
                    }
                    return Lookup::Copy;
                }
                // A key takes a slot when it misses there twice in a row: a copy costs two
                // refcount updates and a key copy, which keys read in turn (more keys than
                // slots) would pay on every hit for nothing.
                if s.candidate == hash {
                    return Lookup::Copy;
                }
                s.candidate = hash;
                Lookup::Pass
            })
            .unwrap_or(Lookup::Pass)
    }

    #[cold]
    pub(super) fn copy(cache: u64, hash: u64, key: &str, generation: u64, version: u64, expires_at: u64, value: &Bytes) {
        if key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return;
        }
        let _ = TABLE.try_with(|t| {
            let Ok(mut t) = t.try_borrow_mut() else { return };
            let s = &mut t[index(hash)];
            s.cache = cache;
            s.hash = hash;
            s.generation = generation;
            s.version = version;
            s.expires_at = expires_at;
            s.key.clear();
            s.key.extend_from_slice(key.as_bytes());
            let old = std::mem::replace(&mut s.value, value.clone());
            drop(t);
            drop(old);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> NearCache {
        let c = NearCache::new(100, 100 * 1024);
        c.resume();
        c
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = cache();
        let t = c.begin_fill("k");
        c.invalidate("k");
        assert!(!c.complete_fill(t, "k", Bytes::from_static(b"old"), Duration::from_secs(5)));
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn a_fill_cannot_overwrite_the_writers_new_value() {
        let c = cache();
        let t = c.begin_fill("k");
        c.put_own_write("k", Bytes::from_static(b"new"), Duration::from_secs(5));
        assert!(!c.complete_fill(t, "k", Bytes::from_static(b"old"), Duration::from_secs(5)));
        assert_eq!(c.get("k").as_deref(), Some(&b"new"[..]));
    }

    #[test]
    fn flush_is_generation_based_and_suspend_bypasses() {
        let c = cache();
        c.put_own_write("a", Bytes::from_static(b"1"), Duration::from_secs(5));
        c.flush();
        assert_eq!(c.get("a"), None);
        let t = c.begin_fill("b");
        c.flush();
        assert!(!c.complete_fill(t, "b", Bytes::from_static(b"2"), Duration::from_secs(5)));
        c.put_own_write("c", Bytes::from_static(b"3"), Duration::from_secs(5));
        c.suspend();
        assert_eq!(c.get("c"), None);
        let t = c.begin_fill("c");
        assert!(!c.complete_fill(t, "c", Bytes::from_static(b"3"), Duration::from_secs(5)));
    }

    #[test]
    fn entries_expire_by_their_own_ttl() {
        let c = cache();
        c.put_own_write("a", Bytes::from_static(b"1"), Duration::from_millis(500));
        assert!(c.get("a").is_some());
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn a_deadline_never_passes_the_ttl_on_the_precise_clock() {
        let start = clock::precise();
        let ttl = Duration::from_millis(200);
        let d = clock::deadline(start, ttl);
        assert!(d <= start + 200_000_000 - clock::margin());
        // The coarse clock never runs ahead of the precise one.
        for _ in 0..1000 {
            let c = clock::coarse();
            assert!(c <= clock::precise());
        }
        // A TTL inside the margin is not cached at all.
        let c = cache();
        c.put_own_write("short", Bytes::from_static(b"1"), Duration::from_nanos(clock::margin()));
        assert_eq!(c.get("short"), None);
    }

    #[test]
    fn a_fills_ttl_runs_from_begin_fill() {
        let c = cache();
        let t = c.begin_fill("k");
        std::thread::sleep(Duration::from_millis(10));
        // 5 ms of this TTL were left when the (slow) read came back: too late to cache.
        let ttl = Duration::from_millis(5) + Duration::from_nanos(clock::margin());
        assert!(!c.complete_fill(t, "k", Bytes::from_static(b"v"), ttl));
        let t = c.begin_fill("k");
        assert!(c.complete_fill(t, "k", Bytes::from_static(b"v"), Duration::from_secs(5)));
    }

    #[test]
    fn keyed_by_user_key_under_a_prefix() {
        let c = NearCache::new(100, 100 * 1024).with_key_prefix("aci:ns:");
        c.resume();
        c.put_own_write("aci:ns:k", Bytes::from_static(b"v"), Duration::from_secs(5));
        assert_eq!(c.get_local("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(c.get("aci:ns:k").as_deref(), Some(&b"v"[..]));
        // Keys of another namespace are never held, and invalidating them touches nothing.
        c.put_own_write("aci:other:k", Bytes::from_static(b"x"), Duration::from_secs(5));
        c.invalidate("aci:other:k");
        assert_eq!(c.get_local("k").as_deref(), Some(&b"v"[..]));
        assert_eq!(c.entry_count(), 1);
        // A fill racing an invalidation by Redis key is dropped (same stripe either way).
        let t = c.begin_fill("aci:ns:j");
        c.invalidate("aci:ns:j");
        assert!(!c.complete_fill(t, "aci:ns:j", Bytes::from_static(b"old"), Duration::from_secs(5)));
        c.invalidate("aci:ns:k");
        assert_eq!(c.get_local("k"), None);
    }

    #[test]
    fn bounded_by_entries_and_bytes() {
        let c = NearCache::new(50, 1 << 20);
        c.resume();
        for i in 0..1000 {
            c.put_own_write(&format!("k{i}"), Bytes::from(vec![0u8; 10]), Duration::from_secs(60));
        }
        assert!(c.entry_count() <= 50, "{}", c.entry_count());
        let c = NearCache::new(1_000_000, 64 * 1024);
        c.resume();
        for i in 0..1000 {
            c.put_own_write(&format!("k{i}"), Bytes::from(vec![0u8; 1000]), Duration::from_secs(60));
        }
        assert!(c.weighted_size() <= 64 * 1024, "{}", c.weighted_size());
        // A value over an eighth of the budget is not cached at all.
        c.put_own_write("huge", Bytes::from(vec![0u8; 20_000]), Duration::from_secs(60));
        assert_eq!(c.get("huge"), None);
    }

    /// Gets `key` often enough that this thread serves it from its front.
    fn hot(c: &NearCache, key: &str) -> Option<Bytes> {
        (0..4).map(|_| c.get(key)).last().flatten()
    }

    #[test]
    fn a_threads_front_copy_dies_with_every_change_to_the_entry() {
        let c = Arc::new(cache());
        let ttl = Duration::from_secs(60);
        c.put_own_write("k", Bytes::from_static(b"1"), ttl);
        assert_eq!(hot(&c, "k").as_deref(), Some(&b"1"[..]));
        let other = |f: &(dyn Fn(&NearCache) + Sync)| std::thread::scope(|t| { t.spawn(|| f(&c)); });
        // Another thread's own write, invalidation, fill, flush and suspend.
        other(&|c| c.put_own_write("k", Bytes::from_static(b"2"), ttl));
        assert_eq!(hot(&c, "k").as_deref(), Some(&b"2"[..]));
        other(&|c| c.invalidate("k"));
        assert_eq!(c.get("k"), None);
        other(&|c| assert!(c.complete_fill(c.begin_fill("k"), "k", Bytes::from_static(b"3"), ttl)));
        assert_eq!(hot(&c, "k").as_deref(), Some(&b"3"[..]));
        other(&|c| c.flush());
        assert_eq!(c.get("k"), None);
        c.put_own_write("k", Bytes::from_static(b"4"), ttl);
        assert_eq!(hot(&c, "k").as_deref(), Some(&b"4"[..]));
        other(&|c| c.suspend());
        assert_eq!(c.get("k"), None);
        // And by its deadline.
        c.resume();
        c.put_own_write("k", Bytes::from_static(b"5"), Duration::from_millis(300) + Duration::from_nanos(clock::margin()));
        assert_eq!(hot(&c, "k").as_deref(), Some(&b"5"[..]));
        std::thread::sleep(Duration::from_millis(320));
        assert_eq!(c.get("k"), None);
    }

    #[test]
    fn fronts_of_two_caches_on_one_thread_do_not_mix() {
        let (a, b) = (cache(), cache());
        a.put_own_write("k", Bytes::from_static(b"a"), Duration::from_secs(60));
        b.put_own_write("k", Bytes::from_static(b"b"), Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(hot(&a, "k").as_deref(), Some(&b"a"[..]));
            assert_eq!(hot(&b, "k").as_deref(), Some(&b"b"[..]));
        }
        b.invalidate("k");
        assert_eq!(hot(&a, "k").as_deref(), Some(&b"a"[..]));
        assert_eq!(b.get("k"), None);
    }

    /// Readers on other threads never go back to an older value, and never read one older
    /// than the last write the writer had published before the read (a happens-before edge, as
    /// a task moving threads has): a copy taken in the window of a change would keep serving
    /// the value from before it.
    #[test]
    fn fronts_are_monotonic_and_read_your_writes_across_threads() {
        let c = Arc::new(cache());
        let published = AtomicU64::new(0);
        let ttl = Duration::from_secs(60);
        const N: u64 = 20_000;
        std::thread::scope(|t| {
            t.spawn(|| {
                for i in 1..=N {
                    if i % 3 == 0 {
                        c.invalidate("k");
                        let tok = c.begin_fill("k");
                        c.complete_fill(tok, "k", Bytes::from(i.to_string()), ttl);
                    } else {
                        c.put_own_write("k", Bytes::from(i.to_string()), ttl);
                    }
                    published.store(i, Ordering::Release);
                    // Leave the readers time to read each value from their fronts.
                    for _ in 0..200 {
                        std::hint::spin_loop();
                    }
                }
            });
            for _ in 0..2 {
                t.spawn(|| {
                    let mut last = 0;
                    loop {
                        let floor = published.load(Ordering::Acquire);
                        if let Some(v) = c.get("k") {
                            let v: u64 = std::str::from_utf8(&v).unwrap().parse().unwrap();
                            assert!(v >= last && v >= floor, "read {v} after {last}, with {floor} written");
                            last = v;
                        }
                        if floor == N {
                            break;
                        }
                    }
                });
            }
        });
    }

    #[test]
    fn the_inline_key_compare_agrees_with_eq() {
        // Every length the word compares handle and their edges, differing at each position.
        for n in 0..=24usize {
            let a: Vec<u8> = (0..n as u8).map(|i| b'a' + i).collect();
            assert!(same_bytes(&a, &a.clone()), "{n}");
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 1;
                assert!(!same_bytes(&a, &b), "{n} at {i}");
            }
            assert!(!same_bytes(&a, &a[..n.saturating_sub(1)]) || n == 0, "{n}");
        }
        // Found through the map by a probe of the same key, never by a different key.
        let c = cache();
        for n in 1..=24usize {
            let k: String = "k".repeat(n);
            c.put_own_write(&k, Bytes::from(k.clone()), Duration::from_secs(5));
        }
        for n in 1..=24usize {
            let k: String = "k".repeat(n);
            assert_eq!(c.get_local(&k).as_deref(), Some(k.as_bytes()), "{n}");
            let mut other = k.clone().into_bytes();
            other[n - 1] = b'j';
            assert_eq!(c.get_local(std::str::from_utf8(&other).unwrap()), None, "{n}");
        }
    }
}
