//! The thread team that runs one layer's parallel parts: the calling thread and one spinning
//! worker per other core.
//!
//! A batch-1 forward pass of a small network is ~60 layers of 20-300 µs each. With rayon's
//! fork/join every layer woke sleeping workers through the kernel (futex round trips, a
//! scheduler pass on a VM) and its idle workers yielded in a loop: measured at about a tenth
//! of EfficientNet-Lite0's batch-1 time. Here the workers spin on a generation counter for a
//! short while after each layer, so the next layer starts them within a cache-line transfer,
//! then park on a condition variable so an idle server costs nothing. Each thread owns a
//! contiguous share of a job's parts, so consecutive layers cut into row ranges keep their rows
//! on the same core; a thread that finishes its share steals from another's, so a core the
//! hypervisor slows down takes fewer parts.
//!
//! No crate fits: rayon parks between jobs (the cost above) and spin-based pools such as
//! ONNX Runtime's live inside their runtimes. The unsafe part is one lifetime erasure, bounded
//! by [`parallel_for`] not returning while any worker can still reach the job.

#![allow(unsafe_code)]

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking: longer than the gap between two layers
/// (the caller's bookkeeping), far shorter than the gap between two requests.
const SPIN_BEFORE_PARKING: Duration = Duration::from_micros(200);

thread_local! {
    /// Set on team workers and on threads that must not fan out (per-image pools): parallel
    /// loops there run inline.
    static INLINE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every [`parallel_for`] on this thread executed inline, one part after the
/// other: for threads that already own a core (one image of a batch each).
pub(crate) fn run_inline<R>(f: impl FnOnce() -> R) -> R {
    let before = INLINE.with(|flag| flag.replace(true));
    let result = f();
    INLINE.with(|flag| flag.set(before));
    result
}

/// How many threads a [`parallel_for`] on this thread would use.
pub(crate) fn threads() -> usize {
    if INLINE.with(Cell::get) {
        1
    } else {
        team().map_or(1, |t| t.shared.workers + 1)
    }
}

/// Part `part` of `len` items cut into `parts` contiguous ranges as even as integers allow:
/// the items `span.0..span.1`. Kernels cut their rows this way, and the team its shares.
pub(crate) fn span(part: usize, parts: usize, len: usize) -> (usize, usize) {
    (part * len / parts, (part + 1) * len / parts)
}

/// Runs `f(0) .. f(parts - 1)` on the team (the calling thread included) and returns when all
/// have finished. Inline on a worker, inside [`run_inline`], with one core, or while another
/// thread uses the team. A panic in a part is resumed on the caller after every part ended.
pub(crate) fn parallel_for<F: Fn(usize) + Sync>(parts: usize, f: F) {
    if parts == 0 {
        return;
    }
    let team = if parts == 1 || INLINE.with(Cell::get) {
        None
    } else {
        team()
    };
    let Some(team) = team else {
        (0..parts).for_each(f);
        return;
    };
    let Ok(_busy) = team.busy.try_lock() else {
        (0..parts).for_each(f);
        return;
    };
    team.shared.run(parts, &f);
}

struct Team {
    /// Held by the thread whose job the team runs.
    busy: Mutex<()>,
    shared: Arc<Shared>,
}

fn team() -> Option<&'static Team> {
    static TEAM: OnceLock<Option<Team>> = OnceLock::new();
    TEAM.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        if workers == 0 {
            return None;
        }
        let shared = Arc::new(Shared::new(workers));
        for i in 0..workers {
            let shared = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("wick-team-{}", i + 1))
                .spawn(move || shared.work(i + 1));
            if spawned.is_err() {
                return None;
            }
        }
        Some(Team {
            busy: Mutex::new(()),
            shared,
        })
    })
    .as_ref()
}

/// A part function with its lifetime erased; only dereferenced while [`Shared::open`].
#[derive(Clone, Copy)]
struct JobRef(*const (dyn Fn(usize) + Sync));

// SAFETY: the pointee is `Sync`, and `Shared::run` keeps it alive while workers can reach it.
unsafe impl Send for JobRef {}

struct Shared {
    workers: usize,
    /// Bumped for every job: what idle workers watch.
    generation: AtomicU64,
    job: Mutex<Option<JobRef>>,
    /// Whether workers may enter the current job.
    open: AtomicBool,
    /// Workers between entering and leaving the current job.
    inside: AtomicUsize,
    /// Each thread's share of the current job (the caller's first, then worker 1's, ...): a
    /// contiguous range of parts, packed as `front << 32 | back`. See [`Shared::claim`].
    shares: Vec<AtomicU64>,
    parts: AtomicUsize,
    done: AtomicUsize,
    /// The first panic of the current job.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn new(workers: usize) -> Shared {
        Shared {
            workers,
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            open: AtomicBool::new(false),
            inside: AtomicUsize::new(0),
            shares: (0..=workers).map(|_| AtomicU64::new(0)).collect(),
            parts: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Cuts `parts` into one contiguous share per thread, in thread order.
    fn share_out(&self, parts: usize) {
        self.parts.store(parts, SeqCst);
        let threads = self.shares.len();
        for (thread, share) in self.shares.iter().enumerate() {
            let (front, back) = span(thread, threads, parts);
            share.store(pack(front, back), SeqCst);
        }
    }

    fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only between
        // entering (inside + 1 while `open`) and leaving; this function closes the job and
        // waits for `inside == 0` before returning, also when a part panics (the guard).
        let erased: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        *self.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobRef(erased));
        self.share_out(parts);
        self.done.store(0, SeqCst);
        self.open.store(true, SeqCst);
        self.generation.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.notify_all();
        }
        struct Close<'a>(&'a Shared);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                let shared = self.0;
                // Every part is claimed once the caller's loop ends; if it unwound instead,
                // the unclaimed ones never start and count as done. Parts a worker holds
                // finish before the job closes.
                for share in &shared.shares {
                    let (front, back) = unpack(share.swap(pack(0, 0), SeqCst));
                    shared.done.fetch_add(back.saturating_sub(front), SeqCst);
                }
                let mut spins = 0u32;
                while shared.done.load(SeqCst) < shared.parts.load(SeqCst) {
                    backoff(&mut spins);
                }
                shared.open.store(false, SeqCst);
                while shared.inside.load(SeqCst) != 0 {
                    backoff(&mut spins);
                }
            }
        }
        let close = Close(self);
        self.claim_parts(0, f);
        drop(close);
        let payload = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(payload) = payload {
            std::panic::resume_unwind(payload);
        }
    }

    /// The next part for thread `me`: the front of its own share, else the back of another's.
    ///
    /// Thread `t` of `T` owns parts `t * parts / T ..` in order, so a kernel that cuts a map
    /// into row ranges leaves the top of every layer's output in the caller's cache and the
    /// bottom in the worker's, and the next layer reads its rows where they were written.
    /// Claimed from one shared counter, the parts alternated between the cores, and each layer
    /// read half its input from the other core's L2: EfficientNet-Lite0 at batch 1 ran 1.3x
    /// faster on two cores than on one (`docs/performance.md`). A thread that runs out steals
    /// from the far end of another's share, so a core the hypervisor slows down still does less.
    fn claim(&self, me: usize) -> Option<usize> {
        let threads = self.shares.len();
        (0..threads).find_map(|offset| {
            let thread = (me + offset) % threads;
            let share = &self.shares[thread];
            let mut current = share.load(SeqCst);
            loop {
                let (front, back) = unpack(current);
                if front >= back {
                    return None;
                }
                let (next, part) = if offset == 0 {
                    (pack(front + 1, back), front)
                } else {
                    (pack(front, back - 1), back - 1)
                };
                match share.compare_exchange_weak(current, next, SeqCst, SeqCst) {
                    Ok(_) => return Some(part),
                    Err(seen) => current = seen,
                }
            }
        })
    }

    /// Runs parts until none is left; a panicking part is recorded (the first payload is
    /// resumed on the caller) and counted as done, so nobody waits for it.
    fn claim_parts(&self, me: usize, f: &(dyn Fn(usize) + Sync)) {
        while let Some(part) = self.claim(me) {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| f(part))) {
                let mut first = self.panic.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert(payload);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }

    fn work(&self, me: usize) {
        INLINE.with(|flag| flag.set(true));
        let mut seen = 0;
        loop {
            seen = self.wait_for_job(seen);
            self.inside.fetch_add(1, SeqCst);
            if self.open.load(SeqCst) {
                let job = *self.job.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(JobRef(f)) = job {
                    // SAFETY: entered while open, so `run` has not returned (see there).
                    self.claim_parts(me, unsafe { &*f });
                }
            }
            self.inside.fetch_sub(1, SeqCst);
        }
    }

    /// Spins, then parks, until the generation moves past `seen`; returns the new one.
    fn wait_for_job(&self, seen: u64) -> u64 {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let generation = self.generation.load(SeqCst);
            if generation != seen {
                return generation;
            }
            spins += 1;
            if spins.is_multiple_of(64) && started.elapsed() > SPIN_BEFORE_PARKING {
                break;
            }
            std::hint::spin_loop();
        }
        let mut guard = self.park.lock().unwrap_or_else(|e| e.into_inner());
        self.sleepers.fetch_add(1, SeqCst);
        loop {
            let generation = self.generation.load(SeqCst);
            if generation != seen {
                self.sleepers.fetch_sub(1, SeqCst);
                return generation;
            }
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A share of parts `front..back` as one word, so a claim is one compare-and-swap.
fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << 32) | back as u64
}

fn unpack(share: u64) -> (usize, usize) {
    (
        (share >> 32) as usize,
        (share & u64::from(u32::MAX)) as usize,
    )
}

/// Busy-waits briefly, then yields the core: a caller waiting on a descheduled worker must
/// not starve it.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 1 << 12 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn every_part_runs_exactly_once() {
        for parts in [1, 2, 3, 17, 1000] {
            let counts: Vec<AtomicU32> = (0..parts).map(|_| AtomicU32::new(0)).collect();
            parallel_for(parts, |i| {
                counts[i].fetch_add(1, SeqCst);
            });
            assert!(counts.iter().all(|c| c.load(SeqCst) == 1), "{parts} parts");
        }
    }

    #[test]
    fn concurrent_callers_and_nested_loops_finish() {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        let total = AtomicUsize::new(0);
                        parallel_for(8, |_| {
                            parallel_for(4, |_| {
                                total.fetch_add(1, SeqCst);
                            });
                        });
                        assert_eq!(total.load(SeqCst), 32);
                    }
                });
            }
        });
    }

    #[test]
    fn each_thread_takes_its_own_rows_in_order_then_steals_from_the_far_end() {
        // Two threads, six parts: the caller owns 0..3 and the worker 3..6.
        let shared = Shared::new(1);
        shared.share_out(6);
        let caller: Vec<_> = std::iter::from_fn(|| shared.claim(0)).collect();
        assert_eq!(caller, [0, 1, 2, 5, 4, 3], "a worker that never came");
        shared.share_out(6);
        assert_eq!(shared.claim(1), Some(3));
        let caller: Vec<_> = std::iter::from_fn(|| shared.claim(0)).collect();
        assert_eq!(caller, [0, 1, 2, 5, 4]);
        assert_eq!(shared.claim(1), None, "every part handed out once");
    }

    #[test]
    fn a_panicking_part_panics_the_caller_and_the_team_still_works() {
        let result = std::panic::catch_unwind(|| {
            parallel_for(64, |i| {
                if i == 63 {
                    panic!("part 63");
                }
            })
        });
        assert!(result.is_err());
        let total = AtomicUsize::new(0);
        parallel_for(10, |_| {
            total.fetch_add(1, SeqCst);
        });
        assert_eq!(total.load(SeqCst), 10);
    }
}
