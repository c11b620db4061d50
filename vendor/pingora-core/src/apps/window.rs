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
//! The window only ever holds requests back while the thread has no time to spare. When the
//! window is full but the thread has gone idle since it last looked (the requests in progress
//! wait on an upstream or a client, not on this CPU), a request starts at once without a
//! place, and a keeper, awake every [`QUICK`] while requests wait, lets every waiting request
//! start the same way once the thread has gone idle. A place is not something a slow party can
//! keep others out with even on a busy thread: held longer than `hold`, it goes to the next in
//! line and its request carries on without one. No request waits longer than `max_wait`.
//! Nothing is refused.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, SemaphorePermit};

/// How often the keeper looks while requests wait.
pub const QUICK: Duration = Duration::from_millis(1);

/// Requests that waited for a place.
pub static WAITED: AtomicU64 = AtomicU64::new(0);
/// Requests that started without a place, the window full, because the thread had gone idle.
pub static IDLE: AtomicU64 = AtomicU64::new(0);
/// Places taken from a request that held one longer than the window's `hold`.
pub static EXPIRED: AtomicU64 = AtomicU64::new(0);
/// Requests that waited `max_wait` and started without a place.
pub static OVERRAN: AtomicU64 = AtomicU64::new(0);

/// The window's settings, as a server's options carry them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowOptions {
    /// Requests worked on at once, per worker thread (at least 1).
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
    /// The thread's park count when the window last looked.
    parks: u64,
}

/// One thread's window.
pub struct Window {
    options: WindowOptions,
    permits: Semaphore,
    leases: Mutex<Leases>,
    /// Wakes the thread's keeper when a request begins to wait.
    someone_waits: Notify,
    /// Lets every waiting request start (without a place).
    open: Notify,
}

thread_local! {
    // One window per worker thread (each runs its own runtime): a request's state stays on the
    // thread whose caches hold it. Made at a thread's first request, for the first options
    // seen; one server's options per process.
    static WINDOW: std::cell::OnceCell<&'static Window> = const { std::cell::OnceCell::new() };
}

impl Window {
    fn new(options: WindowOptions) -> Window {
        Window {
            options,
            permits: Semaphore::new(options.slots.max(1)),
            leases: Mutex::new(Leases::default()),
            someone_waits: Notify::new(),
            open: Notify::new(),
        }
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// While requests wait, every [`QUICK`]: lets them all start if the thread has gone idle
    /// since it last looked, else gives the places held past `hold` to the next in line.
    async fn keep(&'static self) {
        loop {
            if self.leases().waiting == 0 {
                self.someone_waits.notified().await;
                continue;
            }
            tokio::time::sleep(QUICK).await;
            if self.went_idle() {
                self.open.notify_waiters();
            } else {
                self.expire_due();
            }
        }
    }

    /// Whether the thread has parked (gone idle) since the window last looked.
    fn went_idle(&self) -> bool {
        let now = parks();
        let mut leases = self.leases();
        let idled = now != leases.parks;
        leases.parks = now;
        idled
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

/// How many times this thread's runtime has gone idle (parked), if it can tell: a
/// current-thread runtime (Pingora's worker threads without work stealing) has one worker.
/// Elsewhere 0: the thread never counts as idle, and only `hold` and `max_wait` apply.
fn parks() -> u64 {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return 0;
    };
    let metrics = handle.metrics();
    if metrics.num_workers() == 1 {
        metrics.worker_park_count(0)
    } else {
        0
    }
}

/// A request's place in its thread's window (or none): given back when dropped.
pub struct Slot {
    held: Option<(&'static Window, u64, SemaphorePermit<'static>)>,
}

impl Slot {
    /// No place: no window configured, the thread idle, or the wait ran out.
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
        drop(leases);
        drop(permit);
    }
}

/// A place in this thread's window for a request about to start: at once when one is free;
/// when none is, at once without one if the thread has gone idle since the window last
/// looked; else in arrival order when a place is given back or taken from a request past
/// `hold`, or without one when the thread goes idle meanwhile or `max_wait` runs out.
pub async fn enter(options: &WindowOptions) -> Slot {
    let window: &'static Window = WINDOW.with(|w| {
        *w.get_or_init(|| {
            let window: &'static Window = Box::leak(Box::new(Window::new(*options)));
            // The thread's keeper, on the thread's own runtime.
            tokio::spawn(window.keep());
            window
        })
    });
    if let Ok(permit) = window.permits.try_acquire() {
        return window.lease(permit);
    }
    if window.went_idle() {
        IDLE.fetch_add(1, Ordering::Relaxed);
        return Slot::none();
    }
    WAITED.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting::new(window);
    let opened = window.open.notified();
    tokio::pin!(opened);
    tokio::select! {
        biased;
        permit = window.permits.acquire() => match permit {
            Ok(permit) => window.lease(permit),
            // The semaphore is never closed.
            Err(_) => Slot::none(),
        },
        _ = &mut opened => {
            IDLE.fetch_add(1, Ordering::Relaxed);
            Slot::none()
        }
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
