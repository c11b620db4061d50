//! Where log lines go: a buffer in memory, written out by one thread in batches.
//!
//! Access-log lines (target `bindgate::access`) wait in the buffer for at most
//! [`BatchWriter::INTERVAL`]; the writer thread is woken at most once per interval for them, so
//! a request costs no system call and no wake-up of another thread whatever the rate (a
//! channel with a sleeping consumer costs a futex wake per line at low rates). Every other
//! line (startup, reloads, warnings, errors) is written at once. Nothing is dropped: past
//! [`BatchWriter::LIMIT`] buffered bytes a logging thread waits until the buffer has been
//! written. Dropping the [`Flush`] guard writes what is left.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

struct Shared {
    state: Mutex<State>,
    /// How long an access-log line may wait.
    interval: Duration,
    /// The writer thread waits here for lines (or the end).
    wake: Condvar,
    /// Logging threads wait here while the buffer is over the limit.
    drained: Condvar,
}

#[derive(Default)]
struct State {
    buffer: Vec<u8>,
    /// A line that must not wait for the interval is in the buffer.
    urgent: bool,
    closed: bool,
}

/// A `MakeWriter` for `tracing_subscriber::fmt`: cheap to clone, each event one append.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread once everything buffered is written.
pub struct Flush {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    /// How long an access-log line may wait in the buffer.
    pub const INTERVAL: Duration = Duration::from_millis(100);
    /// Buffered bytes past which logging threads wait for the writer.
    pub const LIMIT: usize = 4 << 20;

    /// A writer thread named `name` writing to `out`.
    pub fn spawn(name: &str, out: impl Write + Send + 'static) -> std::io::Result<(Self, Flush)> {
        Self::spawn_with(name, out, Self::INTERVAL)
    }

    fn spawn_with(
        name: &str,
        out: impl Write + Send + 'static,
        interval: Duration,
    ) -> std::io::Result<(Self, Flush)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            interval,
            wake: Condvar::new(),
            drained: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || write_batches(&worker, out))?;
        Ok((
            BatchWriter {
                shared: shared.clone(),
            },
            Flush {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn append(&self, line: &[u8], urgent: bool) {
        let mut state = lock(&self.shared.state);
        while state.buffer.len() >= Self::LIMIT && !state.closed {
            state = self
                .shared
                .drained
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        let was_empty = state.buffer.is_empty();
        state.buffer.extend_from_slice(line);
        let wake = (urgent && !state.urgent) || was_empty || state.buffer.len() >= Self::LIMIT;
        state.urgent |= urgent;
        drop(state);
        if wake {
            self.shared.wake.notify_one();
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = lock(&shared.state);
        while state.buffer.is_empty() && !state.closed {
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        // Lines are waiting: give the batch the rest of the interval unless one is urgent.
        if !state.urgent && !state.closed && state.buffer.len() < BatchWriter::LIMIT {
            state = shared
                .wake
                .wait_timeout_while(state, shared.interval, |s| {
                    !s.urgent && !s.closed && s.buffer.len() < BatchWriter::LIMIT
                })
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        std::mem::swap(&mut batch, &mut state.buffer);
        state.urgent = false;
        let closed = state.closed;
        drop(state);
        shared.drained.notify_all();
        // A failed write (stdout closed) loses these lines; there is nowhere else to say so.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if closed && lock(&shared.state).buffer.is_empty() {
            return;
        }
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.wake.notify_one();
        self.shared.drained.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: tracing's formatter writes each event with one `write_all`.
pub struct Line<'a> {
    writer: &'a BatchWriter,
    urgent: bool,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.append(buf, self.urgent);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            writer: self,
            urgent: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<'a> {
        Line {
            writer: self,
            urgent: meta.target() != "bindgate::access",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records what was written, and how many writes it took.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            s.0.extend_from_slice(buf);
            s.1 += 1;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(w: &BatchWriter, text: &str, urgent: bool) {
        let mut l = Line { writer: w, urgent };
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn access_lines_are_written_in_batches_and_nothing_is_lost() {
        let sink = Sink::default();
        let (w, flush) = BatchWriter::spawn("test-log", sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        line(&w, &format!("{t} {i}\n"), false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(flush);
        let (out, writes) = sink.0.lock().unwrap().clone();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(out.lines().count(), 20_000);
        for t in 0..4 {
            // Each thread's lines, whole and in its order.
            let mine: Vec<_> = out
                .lines()
                .filter(|l| l.starts_with(&format!("{t} ")))
                .collect();
            let expected: Vec<_> = (0..5_000).map(|i| format!("{t} {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert!(writes < 100, "{writes} writes for 20 000 lines");
    }

    #[test]
    fn other_lines_do_not_wait_for_the_interval() {
        let sink = Sink::default();
        let (w, _flush) =
            BatchWriter::spawn_with("test-log", sink.clone(), Duration::from_secs(600)).unwrap();
        line(&w, "GET /a 200\n", false);
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            sink.0.lock().unwrap().0.is_empty(),
            "an access line was not batched"
        );
        // A line of another kind takes the waiting ones with it, at once.
        line(&w, "configuration reloaded\n", true);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while sink.0.lock().unwrap().0.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let (out, _) = sink.0.lock().unwrap().clone();
        assert_eq!(out, b"GET /a 200\nconfiguration reloaded\n");
    }

    #[test]
    fn past_the_limit_loggers_wait_and_nothing_is_lost() {
        let sink = Sink::default();
        let (w, flush) = BatchWriter::spawn("test-log", sink.clone()).unwrap();
        let big = "x".repeat(64 * 1024) + "\n";
        for _ in 0..(3 * BatchWriter::LIMIT / big.len()) {
            line(&w, &big, false);
        }
        drop(flush);
        let (out, _) = sink.0.lock().unwrap().clone();
        assert_eq!(out.len(), (3 * BatchWriter::LIMIT / big.len()) * big.len());
    }
}
