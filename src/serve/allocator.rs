//! How many glibc malloc arenas the server's threads share. glibc gives threads that allocate
//! at the same time arenas of their own (up to eight per core) and keeps what is freed in an
//! arena for that arena's later use. A request's large buffers (a 13 MB JSON line, a 10 MB
//! decoded image) are allocated on whichever HTTP, blocking-pool or rayon thread handles them,
//! so each arena grows to its own high-water mark and peak RSS becomes the sum of those marks
//! rather than the memory actually in use. Two arenas bound that without `malloc_trim` (the
//! 1 GB request of `tests/it/serve_records.rs` and the serving comparison with two arenas:
//! `docs/performance.md`). `MALLOC_ARENA_MAX` in the environment (read by glibc itself) wins.

/// Arenas the server's threads share: one per core of the machines wick is measured on.
const ARENAS: i32 = 2;

/// Limits the arenas, unless `MALLOC_ARENA_MAX` is set; called before the runtime's threads
/// start. Other allocators and C libraries: nothing to do.
pub(super) fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        // SAFETY: `mallopt` only sets an allocator parameter (M_ARENA_MAX takes any positive
        // count); it is safe to call at any time, and here no other thread allocates yet.
        #[allow(unsafe_code)]
        let is_set = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) } == 1;
        if !is_set {
            tracing::warn!(arenas = ARENAS, "glibc refused to limit its malloc arenas");
        }
    }
}
