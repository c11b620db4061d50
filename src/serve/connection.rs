//! The options of a client connection: its deadlines and the window of requests it joins.

use std::time::Duration;

/// The deadlines of a client connection (read at start; a reload does not change them): a
/// connection without a request in progress closes after `idle_timeout` (HTTP/2: GOAWAY
/// first); the TLS handshake, the HTTP/2 preface and each HTTP/1.1 request head from its first
/// byte must complete within `header_timeout`. The body's deadline is the gateway's.
/// With `active_requests`, each worker thread's window of HTTP/1.x requests starts with that
/// many places and the next requests wait their turn (`pingora::apps::window`): at most 1 s,
/// never behind a place held past `active_hold`; the window grows while its thread has time
/// to spare and opens (no waiting) at four times `active_requests`.
pub(super) fn connection_deadlines(
    server: &crate::config::Server,
) -> pingora::apps::HttpServerOptions {
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h1_idle_timeout = Some(server.idle_timeout);
    options.h2_idle_timeout = Some(server.idle_timeout);
    options.header_timeout = Some(server.header_timeout);
    options.request_window =
        (server.active_requests > 0).then_some(pingora::apps::window::WindowOptions {
            slots: server.active_requests,
            hold: server.active_hold,
            max_wait: WINDOW_MAX_WAIT,
        });
    options
}

/// The longest a request waits for a place in the window before it starts without one.
const WINDOW_MAX_WAIT: Duration = Duration::from_secs(1);

/// The window of requests (`pingora::apps::window`, vendored change 15): each test runs on a
/// thread of its own, and so has a window of its own.
#[cfg(test)]
mod tests {
    use pingora::apps::window::{enter, WindowOptions};
    use std::time::{Duration, Instant};

    fn options(slots: usize, hold_ms: u64, wait_ms: u64) -> WindowOptions {
        WindowOptions {
            slots,
            hold: Duration::from_millis(hold_ms),
            max_wait: Duration::from_millis(wait_ms),
        }
    }

    /// A task that always has work while the flag it returns is set (until the test's
    /// runtime ends if nobody clears it): the thread works nearly all the time, as under full
    /// load (each poll computes for 500 µs before it yields, so the runtime's own work between
    /// polls is a small share).
    fn keep_the_thread_busy() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        let busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let working = busy.clone();
        tokio::spawn(async move {
            while working.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                while started.elapsed() < Duration::from_micros(500) {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        });
        busy
    }

    #[tokio::test]
    async fn a_free_place_is_taken_at_once_and_given_back_when_done() {
        keep_the_thread_busy();
        let o = options(2, 60_000, 60_000);
        let (a, b) = (enter(&o).await, enter(&o).await);
        assert!(a.is_held() && b.is_held());
        let third = tokio::time::timeout(Duration::from_millis(100), enter(&o)).await;
        assert!(
            third.is_err(),
            "a third request got in past a window of two"
        );
        drop(a);
        let started = Instant::now();
        assert!(enter(&o).await.is_held());
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn waiting_requests_get_their_places_in_arrival_order() {
        keep_the_thread_busy();
        let o = options(1, 60_000, 60_000);
        let first = enter(&o).await;
        let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let local = tokio::task::LocalSet::new();
        for i in 0..4 {
            let order = order.clone();
            local.spawn_local(async move {
                let slot = enter(&o).await;
                assert!(slot.is_held());
                order.borrow_mut().push(i);
                tokio::task::yield_now().await;
            });
            // Each waiter in line before the next arrives.
            local
                .run_until(tokio::time::sleep(Duration::from_millis(10)))
                .await;
        }
        drop(first);
        local.await;
        assert_eq!(*order.borrow(), vec![0, 1, 2, 3]);
    }

    /// Grows a window of one place on an idle thread until it is open (four places), holding
    /// what it takes: the requests in progress wait on nothing this thread does (a slow
    /// upstream, a slow client), so the window doubles instead of keeping the next waiting.
    async fn grow_until_open(o: &WindowOptions) -> Vec<pingora::apps::window::Slot> {
        let held = enter(o).await;
        assert!(held.is_held());
        let started = Instant::now();
        let second = enter(o).await;
        let waited = started.elapsed();
        assert!(second.is_held(), "the window grew a place for it");
        assert!(waited < Duration::from_millis(500), "{waited:?}");
        // Two places held; the next two wait until the window doubles again, to four: open.
        let started = Instant::now();
        let (a, b) = tokio::join!(enter(o), enter(o));
        assert!(started.elapsed() < Duration::from_millis(500));
        let open = enter(o).await;
        assert!(
            !open.is_held(),
            "an open window lets a request start without a place"
        );
        vec![held, second, a, b]
    }

    #[tokio::test]
    async fn with_the_thread_idle_a_full_window_grows_until_it_opens() {
        grow_until_open(&options(1, 60_000, 60_000)).await;
    }

    #[tokio::test]
    async fn with_the_thread_busy_an_open_window_shrinks_back_and_closes() {
        let o = options(1, 60_000, 60_000);
        drop(grow_until_open(&o).await);
        keep_the_thread_busy();
        // Requests come and go on a busy thread: every period it gives back a place.
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(600) {
            let slot = enter(&o).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
            drop(slot);
        }
        let held = enter(&o).await;
        assert!(held.is_held(), "the window is closed again");
        let next = tokio::time::timeout(Duration::from_millis(150), enter(&o)).await;
        assert!(next.is_err(), "a busy thread's window is back to one place");
    }

    #[tokio::test]
    async fn a_window_that_closes_onto_a_starving_thread_opens_again_at_once() {
        use pingora::apps::window::REOPENED;
        use std::sync::atomic::Ordering::Relaxed;
        let o = options(1, 60_000, 60_000);
        drop(grow_until_open(&o).await);
        // The thread works until the window closes (a closed window gives places again).
        let busy = keep_the_thread_busy();
        let started = Instant::now();
        let first = loop {
            let slot = enter(&o).await;
            if slot.is_held() {
                break slot;
            }
            drop(slot);
            assert!(started.elapsed() < Duration::from_secs(5), "never closed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        // Then it stops: the requests in progress wait on something else (a slow upstream),
        // and more arrive than the closed window has places.
        busy.store(false, Relaxed);
        let before = REOPENED.load(Relaxed);
        let started = Instant::now();
        let (a, b, c, d) = tokio::join!(enter(&o), enter(&o), enter(&o), enter(&o));
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(
            REOPENED.load(Relaxed) > before,
            "the window opened again on a quick look, not at the period's end"
        );
        drop((first, a, b, c, d));
    }

    #[tokio::test]
    async fn with_the_thread_busy_a_place_goes_to_the_next_after_hold_and_only_once() {
        keep_the_thread_busy();
        let o = options(1, 80, 60_000);
        let slow = enter(&o).await;
        let started = Instant::now();
        let next = enter(&o).await;
        let waited = started.elapsed();
        assert!(next.is_held());
        assert!(waited >= Duration::from_millis(70), "{waited:?}");
        assert!(waited < Duration::from_millis(1_000), "{waited:?}");
        // The expired request ends: its place is already `next`'s, so none comes free; the
        // third waits for `next`'s lease to run out.
        drop(slow);
        let started = Instant::now();
        let third = enter(&o).await;
        assert!(third.is_held());
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "a place came free when a request whose place had been taken ended"
        );
        drop((next, third));
    }

    #[tokio::test]
    async fn no_request_waits_past_max_wait() {
        keep_the_thread_busy();
        let o = options(1, 60_000, 80);
        let _held = enter(&o).await;
        let started = Instant::now();
        let late = enter(&o).await;
        let waited = started.elapsed();
        assert!(!late.is_held(), "started without a place");
        assert!(waited >= Duration::from_millis(70) && waited < Duration::from_millis(1_000));
    }
}
