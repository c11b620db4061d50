//! Real Redis servers (Debian's `redis-server`) on free loopback ports, one per test, stopped
//! when dropped; and a three-master Redis Cluster made with `redis-cli --cluster create`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    /// `redis-cli` arguments for a TLS-only server (`--tls --cacert CA`).
    cli_tls: Vec<String>,
}

/// The process id of the redis-server answering on `port`, if one does.
fn answering_pid(port: u16, tls: &[String]) -> Option<u32> {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(tls)
        .args(["INFO", "server"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
}

/// How a launch ended.
enum Launch {
    /// This child answers on its port.
    Up,
    /// Another process took the port between the probe and redis-server's bind.
    PortTaken,
}

/// Waits until `child` itself answers on `port` (not another test's server that took the
/// port), or it exits.
fn wait_answers(child: &mut Child, port: u16, log: &Path, tls: &[String]) -> Launch {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if answering_pid(port, tls) == Some(child.id()) {
            return Launch::Up;
        }
        let said = || std::fs::read_to_string(log).unwrap_or_default();
        if let Ok(Some(_)) = child.try_wait() {
            let said = said();
            if said.contains("Address already in use") {
                return Launch::PortTaken;
            }
            panic!("redis-server on {port} exited: {said}");
        }
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start: {}",
            said()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisServer {
    /// A server with every write on disk before it answers (`appendonly yes`,
    /// `appendfsync always`): what the README recommends.
    pub fn start() -> RedisServer {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> RedisServer {
        Self::start_on(free_port(), extra)
    }

    fn start_on(port: u16, extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|e| e.to_string()).collect(),
            cli_tls: Vec::new(),
        };
        // redis-server cannot bind port 0 and report it (`--port 0` means no TCP): the port is
        // probed free, and when another process takes it first, another is probed.
        for _ in 0..3 {
            if let Launch::Up = s.launch() {
                return s;
            }
            s.port = if extra.contains(&"--cluster-enabled") {
                cluster_port()
            } else {
                free_port()
            };
        }
        panic!("redis-server found no free port in three tries");
    }

    /// A server that speaks TLS only, with `cert` and `key` (clients need not present one).
    pub fn start_tls(cert: &Path, key: &Path, ca: &Path) -> RedisServer {
        let port = free_port();
        let path = |p: &Path| p.display().to_string();
        let mut s = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().expect("tempdir"),
            extra: vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
            cli_tls: vec!["--tls".into(), "--cacert".into(), path(ca)],
        };
        match s.launch() {
            Launch::Up => s,
            Launch::PortTaken => panic!("port {port} was taken before redis-server bound it"),
        }
    }

    fn launch(&mut self) -> Launch {
        let log = self.dir.path().join("redis.log");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd
            .spawn()
            .expect("redis-server (apt-get install -y redis-server)");
        let launch = wait_answers(&mut child, self.port, &log, &self.cli_tls);
        self.child = Some(child);
        launch
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -9`: nothing flushed on the way out.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill();
        if let Launch::PortTaken = self.launch() {
            panic!("port {} was taken while redis-server was down", self.port);
        }
    }

    /// `redis-cli` against this server; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(&self.cli_tls)
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Three masters, no replicas, slots spread by `redis-cli --cluster create`.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_on(
                    cluster_port(),
                    &["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"],
                )
            })
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for n in &nodes {
            cmd.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // Wait until every node agrees the cluster is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !nodes
            .iter()
            .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(Instant::now() < deadline, "the cluster did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        RedisCluster { nodes }
    }

    /// The YAML list of seed URLs.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Keys held by each master.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.cli(&["DBSIZE"]).parse().unwrap_or(0))
            .collect()
    }
}

#[allow(dead_code)]
pub fn data_dir(s: &RedisServer) -> PathBuf {
    s.dir.path().to_path_buf()
}

/// A port a cluster node can take: Redis puts its cluster bus on port + 10000, so the port
/// must be at most 55535 ("Redis port number too high" above it) and port + 10000 free too.
/// Both are bound to check, then released for redis-server.
fn cluster_port() -> u16 {
    let mut seed = [0u8; 2];
    openssl::rand::rand_bytes(&mut seed).expect("random");
    let span = 55_535 - 20_000;
    for i in 0..span {
        let port = 20_000 + ((u32::from(u16::from_le_bytes(seed)) + i) % span) as u16;
        let node = std::net::TcpListener::bind(("127.0.0.1", port));
        let bus = std::net::TcpListener::bind(("127.0.0.1", port + 10_000));
        if node.is_ok() && bus.is_ok() {
            return port;
        }
    }
    panic!("no port pair free for a cluster node below 55536");
}
