//! A real OTLP/HTTP receiver (`tests/otlp/receiver.py`), decoding bindgate's spans with
//! OpenTelemetry's own protobuf package from PyPI, installed once into a virtual environment
//! under the target folder.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The virtual environment's python, made on first use.
fn python() -> PathBuf {
    static MADE: OnceLock<PathBuf> = OnceLock::new();
    MADE.get_or_init(|| {
        let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("otlp-venv");
        let python = venv.join("bin/python");
        let requirements =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/requirements.txt");
        let stamp = venv.join("requirements.txt");
        let wanted = std::fs::read(&requirements).expect("tests/otlp/requirements.txt");
        if std::fs::read(&stamp).ok().as_ref() != Some(&wanted) {
            let _ = std::fs::remove_dir_all(&venv);
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .output()
                .expect("python3 (apt-get install -y python3 python3-venv)");
            assert!(
                made.status.success(),
                "python3 -m venv: {}",
                String::from_utf8_lossy(&made.stderr)
            );
            let pip = Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "-r"])
                .arg(&requirements)
                .output()
                .expect("pip");
            assert!(
                pip.status.success(),
                "pip install: {}",
                String::from_utf8_lossy(&pip.stderr)
            );
            std::fs::write(&stamp, wanted).expect("stamp");
        }
        python
    })
    .clone()
}

/// A running receiver and the spans it decoded.
pub struct Collector {
    child: Child,
    pub port: u16,
    spans: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Collector {
    pub fn start() -> Collector {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/otlp/receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the OTLP receiver");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = lines
            .next()
            .and_then(|l| l.ok())
            .and_then(|l| l.trim().parse().ok())
            .expect("the receiver's port");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().expect("lock").push(v);
                }
            }
        });
        Collector { child, port, spans }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans received, once `done` holds for them (10 s at most).
    pub fn wait(&self, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let spans = self.spans.lock().expect("lock").clone();
            if done(&spans) || Instant::now() > deadline {
                return spans;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
