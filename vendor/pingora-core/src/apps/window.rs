// bindgate: the requests a server works on at once (change 15).

//! A window of requests worked on at once.
//!
//! With hundreds of HTTP/1.x connections busy on one worker thread, a proxy that starts every
//! request as soon as its first bytes arrive holds hundreds of requests half done: each one's
//! state (its future, its session, its TLS records) has gone cold in the CPU's caches by the
//! time it is picked up again, and every request costs more. A window lets a thread start a
//! request only while fewer than `slots` are in progress; the others wait for a place in
//! arrival order, holding nothing but their connection (their bytes stay in the kernel).
//!
//! The window's size follows the thread's load. It starts at `slots` places. Every [`PERIOD`]
//! the window looks at how much of it the thread worked: when requests waited for a place
//! while the thread had time to spare (the requests in progress wait on an upstream or a
//! client, not on this CPU), the window doubles; when the thread was busy, it gives back an
//! 8th of its places, down to `slots`. Grown to [`OPEN`] times `slots`, the window is open:
//! every request starts at once, as without a window. A busy thread shrinks an open window by
//! a 64th a period, which only times its next try at closing; for the period after it closes,
//! the window looks every [`QUICK_PERIOD`] and opens again at once if the thread starves. So a
//! thread whose upstream answers at once works on a few requests at a time, and one whose
//! upstream is slow lets as many wait on it as it needs to stay busy.
//!
//! A place is not something a slow party can keep others out with: held longer than `hold`,
//! it goes to the next in line and its request carries on without one. No request waits
//! longer than `max_wait`. Nothing is refused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How often the keeper looks while requests wait.
pub const QUICK: Duration = Duration::from_millis(1);
/// How often the window's size follows the thread's load.
pub const PERIOD: Duration = Duration::from_millis(50);
/// How often a window that has just closed looks whether requests wait on a thread that is
/// hardly working.
pub const QUICK_PERIOD: Duration = Duration::from_millis(10);
/// Below this share of a [`QUICK_PERIOD`] worked while requests waited, a window that has just
/// closed is far too small: it opens again at once. (Over 10 ms the reads are coarse: tokio
/// adds up a thread's busy time every 61 polls; only a deep dip counts.)
pub const STARVED: f64 = 0.5;
/// The share of a period a thread works (as tokio counts it: polling tasks, not waiting for
/// or handling I/O events) from which it counts as busy. A thread that never waits for work
/// reads ~0.97 here.
pub const BUSY: f64 = 0.85;
/// A window grown to this many times `slots` is open: requests start without a place. It
/// keeps following the load, and closes again once it has shrunk below.
pub const OPEN: usize = 4;
/// The most places a window grows to.
pub const MOST: usize = 65_536;

/// Requests that waited for a place.
pub static WAITED: AtomicU64 = AtomicU64::new(0);
/// Times a window doubled: requests waited while its thread had time to spare.
pub static GREW: AtomicU64 = AtomicU64::new(0);
/// Times a window that had just closed opened again at once: its thread starved.
pub static REOPENED: AtomicU64 = AtomicU64::new(0);
/// Times a window gave back places: its thread was busy.
pub static SHRANK: AtomicU64 = AtomicU64::new(0);
/// Places all windows have now.
pub static PLACES: AtomicU64 = AtomicU64::new(0);
/// Places taken from a request that held one longer than the window's `hold`.
pub static EXPIRED: AtomicU64 = AtomicU64::new(0);
/// Requests that waited `max_wait` and started without a place.
pub static OVERRAN: AtomicU64 = AtomicU64::new(0);

/// The window's settings, as a server's options carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowOptions {
    /// Requests worked on at once, per worker thread, at the least (at least 1): the window
    /// starts with this many places and grows while its thread has time to spare.
    pub slots: usize,
    /// A request holding its place longer than this gives it up to the next in line.
    pub hold: Duration,
    /// The longest a request waits for a place before it starts without one.
    pub max_wait: Duration,
}

#[derive(Default)]
struct Leases {
    /// The places held, oldest first: (taken at, lease id).
    held: VecDeque<(Instant, u64)>,
    /// Requests waiting for a place.
    waiting: usize,
    /// Leases taken away (their place given to the next in line): their permit is not given
    /// back when they end.
    expired: Vec<u64>,
    next: u64,
    /// Places the window has.
    limit: usize,
    /// Places to take back as they are given back (the window shrank while they were held).
    owed: usize,
    /// Whether a request waited since the window last looked.
    waited: bool,
    /// When the window last looked, and how long the thread had been busy then.
    looked: Option<(Instant, Duration)>,
    /// Over the period after the window closed: when it last looked, and the busy time then.
    probe: Option<(Instant, Duration)>,
}

/// One thread's window.
pub struct Window {
    options: WindowOptions,
    permits: Semaphore,
    leases: Mutex<Leases>,
    /// Wakes the thread's keeper when a request begins to wait.
    someone_waits: Notify,
}

thread_local! {
    // One window per worker thread (each runs its own runtime): a request's state stays on the
    // thread whose caches hold it. Made at a thread's first request, for the first options
    // seen; one server's options per process.
    static WINDOW: std::cell::OnceCell<&'static Window> = const { std::cell::OnceCell::new() };
}

impl Window {
    fn new(options: WindowOptions) -> Window {
        let slots = options.slots.clamp(1, MOST);
        PLACES.fetch_add(slots as u64, Ordering::Relaxed);
        Window {
            options,
            permits: Semaphore::new(slots),
            leases: Mutex::new(Leases {
                limit: slots,
                ..Leases::default()
            }),
            someone_waits: Notify::new(),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While requests wait, every [`QUICK`]: gives the places held past `hold` to the next in
    /// line, and lets the window follow the thread's load.
    async fn keep(&'static self) {
        loop {
            if self.leases().waiting == 0 {
                self.someone_waits.notified().await;
                continue;
            }
            tokio::time::sleep(QUICK).await;
            if !self.look() {
                self.expire_due();
            }
        }
    }

    /// Once a [`PERIOD`]: doubles the window if requests waited while the thread had time to
    /// spare, gives back an 8th of its places (a 64th when open; down to `slots`) if the
    /// thread was busy; every [`QUICK_PERIOD`] of the period after it closed, opens it again
    /// if requests wait on a starving thread. Whether the window is open.
    fn look(&self) -> bool {
        let now = Instant::now();
        let slots = self.options.slots.clamp(1, MOST);
        let open_at = slots.saturating_mul(OPEN);
        let mut leases = self.leases();
        let due = |at: Option<(Instant, Duration)>, every: Duration| {
            at.is_none_or(|(then, _)| now.saturating_duration_since(then) >= every)
        };
        let probing = leases.probe.is_some();
        let quick_due = probing && due(leases.probe, QUICK_PERIOD);
        if !quick_due && !due(leases.looked, PERIOD) {
            return leases.limit >= open_at;
        }
        let Some(busy) = busy_time() else {
            return false;
        };
        // The share of the time since `then` the thread worked.
        let share_since = |(then, busy_then): (Instant, Duration)| {
            let wall = now.saturating_duration_since(then).as_secs_f64();
            busy.saturating_sub(busy_then).as_secs_f64() / wall.max(1e-9)
        };
        if quick_due {
            // Just closed: is the window far too small for what the thread is doing?
            let waited = leases.waiting > 0;
            if let Some(then) = leases.probe.replace((now, busy)) {
                if waited && share_since(then) < STARVED {
                    self.grow(&mut leases, open_at);
                    REOPENED.fetch_add(1, Ordering::Relaxed);
                    leases.probe = None;
                    // A new period begins.
                    leases.looked = Some((now, busy));
                    leases.waited = false;
                    return leases.limit >= open_at;
                }
            }
            if !due(leases.looked, PERIOD) {
                return leases.limit >= open_at;
            }
        }
        // A period's end: a probe ends with it.
        leases.probe = None;
        let waited = std::mem::take(&mut leases.waited) || leases.waiting > 0;
        let Some(then) = leases.looked.replace((now, busy)) else {
            return leases.limit >= open_at;
        };
        if share_since(then) < BUSY {
            if waited {
                self.grow(&mut leases, open_at);
            }
        } else if leases.limit > slots {
            let was_open = leases.limit >= open_at;
            // An open window shrinks slowly (it only times the next try at closing); a closed
            // one back towards `slots` soon.
            let part = if was_open { 64 } else { 8 };
            let fewer = (leases.limit / part).clamp(1, leases.limit - slots);
            leases.limit -= fewer;
            // Free places go at once, held ones as they are given back.
            let taken = self.permits.forget_permits(fewer);
            leases.owed += fewer - taken;
            PLACES.fetch_sub(fewer as u64, Ordering::Relaxed);
            SHRANK.fetch_add(1, Ordering::Relaxed);
            if was_open && leases.limit < open_at {
                // Closed: over the next period, look every QUICK_PERIOD whether that starves
                // the thread.
                leases.probe = Some((now, busy));
            }
        }
        leases.limit >= open_at
    }

    /// Doubles the window; once open, lets those waiting go too.
    fn grow(&self, leases: &mut Leases, open_at: usize) {
        if leases.limit >= MOST {
            return;
        }
        let more = leases.limit.min(MOST - leases.limit);
        leases.limit += more;
        // Places still owed are simply not taken back.
        let forgiven = more.min(leases.owed);
        leases.owed -= forgiven;
        self.permits.add_permits(more - forgiven);
        PLACES.fetch_add(more as u64, Ordering::Relaxed);
        GREW.fetch_add(1, Ordering::Relaxed);
        if leases.limit >= open_at && leases.waiting > 0 {
            // Open now: those waiting go too, with places taken back as they end.
            let waiting = leases.waiting;
            leases.owed += waiting;
            self.permits.add_permits(waiting);
        }
    }

    fn lease(&'static self, permit: SemaphorePermit<'static>) -> Slot {
        let mut leases = self.leases();
        let id = leases.next;
        leases.next = leases.next.wrapping_add(1);
        leases.held.push_back((Instant::now(), id));
        Slot {
            held: Some((self, id, permit)),
        }
    }

    /// Takes the places of the oldest requests held past `hold` (no more than requests wait)
    /// and gives them to the next in line.
    fn expire_due(&self) {
        let now = Instant::now();
        let mut freed = 0;
        {
            let mut leases = self.leases();
            while freed < leases.waiting {
                let Some(&(at, id)) = leases.held.front() else {
                    break;
                };
                if now.saturating_duration_since(at) < self.options.hold {
                    break;
                }
                leases.held.pop_front();
                leases.expired.push(id);
                freed += 1;
            }
        }
        if freed > 0 {
            EXPIRED.fetch_add(freed as u64, Ordering::Relaxed);
            self.permits.add_permits(freed);
        }
    }
}

/// How long this thread's runtime has worked, if it can tell: a current-thread runtime
/// (Pingora's worker threads without work stealing) has one worker. Elsewhere `None`: the
/// window keeps `slots` places, and only `hold` and `max_wait` apply.
fn busy_time() -> Option<Duration> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let metrics = handle.metrics();
    (metrics.num_workers() == 1).then(|| metrics.worker_total_busy_duration(0))
}

/// A request's place in its thread's window (or none): given back when dropped.
pub struct Slot {
    held: Option<(&'static Window, u64, SemaphorePermit<'static>)>,
}

impl Slot {
    /// No place: no window configured, or the wait ran out.
    pub fn none() -> Slot {
        Slot { held: None }
    }

    /// Whether this request holds a place.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((window, id, permit)) = self.held.take() else {
            return;
        };
        let mut leases = window.leases();
        if let Some(i) = leases.expired.iter().position(|e| *e == id) {
            // Its place went to another request when the lease ran out: that one gives it
            // back.
            leases.expired.swap_remove(i);
            drop(leases);
            permit.forget();
            return;
        }
        if let Some(i) = leases.held.iter().position(|(_, e)| *e == id) {
            leases.held.remove(i);
        }
        if leases.owed > 0 {
            // The window shrank: this place is not given to anyone.
            leases.owed -= 1;
            drop(leases);
            permit.forget();
            return;
        }
        drop(leases);
        drop(permit);
    }
}

/// A place in this thread's window for a request about to start: at once when one is free;
/// else in arrival order when a place is given back, taken from a request past `hold` or made
/// as the window grows, or without one when `max_wait` runs out.
pub async fn enter(options: &WindowOptions) -> Slot {
    let window: &'static Window = WINDOW.with(|w| {
        *w.get_or_init(|| {
            let window: &'static Window = Box::leak(Box::new(Window::new(*options)));
            // The thread's keeper, on the thread's own runtime.
            tokio::spawn(window.keep());
            window
        })
    });
    if window.look() {
        return Slot::none();
    }
    if let Ok(permit) = window.permits.try_acquire() {
        return window.lease(permit);
    }
    WAITED.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting::new(window);
    tokio::select! {
        biased;
        permit = window.permits.acquire() => match permit {
            Ok(permit) => window.lease(permit),
            // The semaphore is never closed.
            Err(_) => Slot::none(),
        },
        _ = tokio::time::sleep(window.options.max_wait) => {
            OVERRAN.fetch_add(1, Ordering::Relaxed);
            Slot::none()
        }
    }
}

/// A request counted among those waiting for a place while it lives.
struct Waiting(&'static Window);

impl Waiting {
    fn new(window: &'static Window) -> Waiting {
        let first = {
            let mut leases = window.leases();
            leases.waiting += 1;
            leases.waited = true;
            leases.waiting == 1
        };
        if first {
            window.someone_waits.notify_one();
        }
        Waiting(window)
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut leases = self.0.leases();
        leases.waiting = leases.waiting.saturating_sub(1);
    }
}
