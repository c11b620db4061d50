//! Test harness: the real bindgate binary on free ports, certificates generated per test, a
//! recording upstream, real HTTP clients.
#![allow(dead_code)]

pub mod http1;
pub mod otlp;
pub mod redis;
pub mod tokens;
pub mod upstream;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[allow(unused_imports)]
pub use upstream::{Recorded, Upstream};

/// A free TCP port on loopback. The port is released before bindgate takes it; tests that race
/// for the same port are retried by the OS handing out another.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Two different free TCP ports on loopback (listen and admin): both are held while the
/// second is chosen, so the OS cannot hand out the same one twice.
pub fn two_free_ports() -> (u16, u16) {
    let port = |l: &TcpListener| l.local_addr().expect("a bound port").port();
    let first = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    let second = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
    (port(&first), port(&second))
}

/// Development certificates written by bindgate's own `dev-certs` into a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(env!("CARGO_BIN_EXE_bindgate"))
            .arg("dev-certs")
            .arg(dir.path())
            .output()
            .expect("run bindgate dev-certs");
        assert!(
            out.status.success(),
            "dev-certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn read(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.path(file)).expect("read a PKI file")
    }

    pub fn token(&self, file: &str) -> String {
        String::from_utf8(self.read(file))
            .expect("utf-8")
            .trim()
            .to_string()
    }

    /// DER of a certificate file.
    pub fn der(&self, stem: &str) -> Vec<u8> {
        openssl::x509::X509::from_pem(&self.read(&format!("{stem}.crt")))
            .and_then(|c| c.to_der())
            .expect("certificate")
    }

    /// x5t#S256 of a certificate file, computed here independently of bindgate.
    pub fn thumbprint(&self, stem: &str) -> String {
        use base64::Engine;
        let digest = openssl::sha::sha256(&self.der(stem));
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    }
}

/// A running bindgate process.
pub struct Bindgate {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub listen: SocketAddr,
    /// The ports written into its configuration (0: chosen by bindgate).
    written: (u16, u16),
    dir: tempfile::TempDir,
    log: PathBuf,
}

/// The listen and admin ports a `bindgate starting` line of `log` names (text or JSON log).
pub fn startup_ports(log: &str) -> Option<(u16, u16)> {
    let line = log.lines().find(|l| l.contains("bindgate starting"))?;
    let port_of = |key: &str| -> u16 {
        let at = [format!("{key}="), format!("\"{key}\":\"")]
            .iter()
            .find_map(|k| line.find(k.as_str()).map(|i| i + k.len()))
            .unwrap_or_else(|| panic!("no {key} address in: {line}"));
        let address: String = line[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
            .collect();
        address.parse::<SocketAddr>().map(|a| a.port()).unwrap_or(0)
    };
    Some((port_of("listen"), port_of("admin")))
}

/// How a test's bindgate gets its listen and admin ports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ports {
    /// Port 0 in the configuration; bindgate binds and the harness reads its startup line.
    Chosen,
    /// Probed free before it starts, written into the configuration (DPoP origins, upgrades).
    Named,
}

impl Ports {
    fn of(yaml: &str) -> Ports {
        if yaml.contains("{PORT}") {
            Ports::Named
        } else {
            Ports::Chosen
        }
    }
}

pub struct Started {
    pub bindgate: Bindgate,
}

impl Bindgate {
    /// Starts bindgate on `yaml`, where `{LISTEN}`, `{PORT}`, `{ADMIN}` and `{PKI}` are replaced
    /// by the listen address, its port, the admin address and the PKI directory; waits until
    /// `/readyz` is 200. The addresses are port 0, bound by bindgate and read back from its
    /// startup line, unless `yaml` names `{PORT}` (a DPoP `htu`, an origin): then the ports
    /// must be known before it starts (see [`Ports::Named`]).
    pub fn start(pki: &Pki, yaml: &str) -> Bindgate {
        Self::start_with_files(pki, yaml, &[], Ports::of(yaml))
    }

    /// As [`Bindgate::start`], on ports known before it starts: a `run --upgrade` takes the
    /// sockets over by the addresses in the configuration.
    #[allow(dead_code)]
    pub fn start_named(pki: &Pki, yaml: &str) -> Bindgate {
        Self::start_with_files(pki, yaml, &[], Ports::Named)
    }

    /// As [`Bindgate::start`], with `files` written into the config's directory first (`{DIR}`
    /// in `yaml` names it): files a test replaces while bindgate runs.
    pub fn start_with_files(
        pki: &Pki,
        yaml: &str,
        files: &[(&str, Vec<u8>)],
        ports: Ports,
    ) -> Bindgate {
        // Named ports are probed free, and a parallel test can take one between the probe and
        // bindgate's bind: then bindgate exits at once saying so, and another pair is tried.
        // Ports bindgate chose itself cannot be taken.
        let tries = match ports {
            Ports::Chosen => 1,
            Ports::Named => 3,
        };
        for _ in 0..tries {
            let dir = tempfile::tempdir().expect("tempdir");
            for (name, content) in files {
                std::fs::write(dir.path().join(name), content).expect("write a file");
            }
            let mut b = Self::spawn_in(pki, yaml, &[], ports, dir, &[]);
            match b.ready_or_exit() {
                Ok(()) => return b,
                Err(log) if ports == Ports::Named && log.contains("cannot listen on") => continue,
                Err(log) => panic!("bindgate exited:\n{log}"),
            }
        }
        panic!("no free ports after three tries");
    }

    /// `program` (a copy of the binary, as installed) on named ports with `env` and `files`
    /// in its directory, ready.
    #[allow(dead_code)]
    pub fn start_program(
        pki: &Pki,
        yaml: &str,
        program: &Path,
        env: &[(&str, &str)],
        files: &[(&str, Vec<u8>)],
    ) -> Bindgate {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write a file");
        }
        let mut b = Self::spawn_program(program, pki, yaml, env, Ports::Named, dir, &[], None);
        if let Err(log) = b.ready_or_exit() {
            panic!("bindgate exited:\n{log}");
        }
        b
    }

    pub fn spawn(pki: &Pki, yaml: &str, env: &[(&str, &str)]) -> Bindgate {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_in(pki, yaml, env, Ports::of(yaml), dir, &[])
    }

    /// `yaml` with the placeholders of [`Bindgate::start`] filled in for these ports.
    fn fill(pki: &Pki, yaml: &str, port: u16, admin_port: u16, dir: &Path) -> String {
        yaml.replace("{LISTEN}", &format!("127.0.0.1:{port}"))
            .replace("{PORT}", &port.to_string())
            .replace("{ADMIN}", &format!("127.0.0.1:{admin_port}"))
            .replace("{PKI}", &pki.dir.path().display().to_string())
            .replace("{DIR}", &dir.display().to_string())
    }

    /// The configuration file this process runs on.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.yaml")
    }

    /// The directory of the configuration file (`{DIR}` in a config).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the configuration file (placeholders filled in as at start), atomically.
    pub fn rewrite_config(&self, pki: &Pki, yaml: &str) {
        let (port, admin_port) = self.written;
        let text = Self::fill(pki, yaml, port, admin_port, self.dir.path());
        let tmp = self.dir.path().join("proxy.yaml.new");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config_path()).expect("rename config");
    }

    /// A second process on this one's configuration file and ports, with `args` after
    /// `run -c FILE` (e.g. `--upgrade`); its log in `log_name` in the same directory.
    pub fn spawn_beside(&self, args: &[&str], log_name: &str) -> Child {
        let log_file = std::fs::File::create(self.dir.path().join(log_name)).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_bindgate"))
            .arg("run")
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .env("BINDGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("start bindgate")
    }

    fn spawn_in(
        pki: &Pki,
        yaml: &str,
        env: &[(&str, &str)],
        ports: Ports,
        dir: tempfile::TempDir,
        args: &[&str],
    ) -> Bindgate {
        let program = Path::new(env!("CARGO_BIN_EXE_bindgate"));
        Self::spawn_program(program, pki, yaml, env, ports, dir, args, None)
    }

    /// As [`Bindgate::start`] (ports chosen by bindgate), with the open descriptor limit set
    /// to `soft` and `hard` in the child before it runs.
    #[allow(dead_code)]
    pub fn start_with_nofile(pki: &Pki, yaml: &str, soft: u64, hard: u64) -> Bindgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let program = Path::new(env!("CARGO_BIN_EXE_bindgate"));
        let mut b = Self::spawn_program(
            program,
            pki,
            yaml,
            &[],
            Ports::Chosen,
            dir,
            &[],
            Some((soft, hard)),
        );
        if let Err(log) = b.ready_or_exit() {
            panic!("bindgate exited:\n{log}");
        }
        b
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_program(
        program: &Path,
        pki: &Pki,
        yaml: &str,
        env: &[(&str, &str)],
        ports: Ports,
        dir: tempfile::TempDir,
        args: &[&str],
        nofile: Option<(u64, u64)>,
    ) -> Bindgate {
        let (port, admin_port) = match ports {
            Ports::Named => two_free_ports(),
            Ports::Chosen => (0, 0),
        };
        let config = dir.path().join("proxy.yaml");
        let text = Self::fill(pki, yaml, port, admin_port, dir.path());
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("bindgate.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(program);
        cmd.arg("run")
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("BINDGATE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some((soft, hard)) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit runs between fork and exec, and it is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start bindgate");
        let mut b = Bindgate {
            child,
            port,
            admin_port,
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            written: (port, admin_port),
            dir,
            log,
        };
        if ports == Ports::Chosen {
            b.read_back_ports();
        }
        b
    }

    /// Reads the ports bindgate bound from its startup line, waiting for it until the process
    /// exits (its ports stay 0) or 60 s pass.
    fn read_back_ports(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((port, admin_port)) = startup_ports(&self.logs()) {
                self.port = port;
                self.admin_port = admin_port;
                self.listen = SocketAddr::from(([127, 0, 0, 1], port));
                return;
            }
            if !self.is_running() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until `/readyz` is 200 (Ok), or the process exits (Err with its log).
    fn ready_or_exit(&mut self) -> Result<(), String> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.admin_url("/readyz")).send() {
                if r.status() == 200 {
                    return Ok(());
                }
            }
            if !self.is_running() {
                return Err(self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "bindgate not ready within 60s; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn wait_ready(&self) {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.admin_url("/readyz")).send() {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "bindgate not ready within 60s; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.port)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits (bounded) until the log contains `needle`; the whole log.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.logs();
            if log.contains(needle) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, at most `limit`; its exit status, or None if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{signal} failed");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn metrics(&self) -> String {
        reqwest::blocking::get(self.admin_url("/metrics"))
            .and_then(|r| r.text())
            .expect("metrics")
    }

    /// Rewrites the configuration, sends SIGHUP and waits (10 s at most) until the process
    /// counts one more successful reload.
    #[allow(dead_code)]
    pub fn reload_with(&self, pki: &Pki, yaml: &str) {
        let ok = "bindgate_config_reloads_total{result=\"ok\"}";
        let before = self.metric(ok);
        self.rewrite_config(pki, yaml);
        self.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric(ok) <= before {
            assert!(Instant::now() < deadline, "no reload:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The value of one series of `/metrics` (its name and labels as written there), 0 when
    /// absent.
    #[allow(dead_code)]
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    /// A reqwest client that trusts the test CA, pins `localhost` to the listener and presents
    /// the certificate `identity` (a PKI stem like `client1`) when given.
    pub fn client(
        &self,
        pki: &Pki,
        identity: Option<&str>,
        http: Http,
    ) -> reqwest::blocking::Client {
        let ca = reqwest::Certificate::from_pem(&pki.read("ca.crt")).expect("CA");
        let mut b = reqwest::blocking::Client::builder()
            .use_native_tls()
            .add_root_certificate(ca)
            .tls_built_in_root_certs(false)
            .resolve("localhost", self.listen)
            .timeout(Duration::from_secs(20));
        if let Some(stem) = identity {
            let id = reqwest::Identity::from_pkcs8_pem(
                &pki.read(&format!("{stem}.crt")),
                &pki.read(&format!("{stem}.key")),
            )
            .expect("identity");
            b = b.identity(id);
        }
        b = match http {
            Http::One => b.http1_only(),
            Http::Alpn => b,
        };
        b.build().expect("client")
    }
}

impl Drop for Bindgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 only.
    One,
    /// Whatever ALPN picks: HTTP/2 with bindgate.
    Alpn,
}

/// The start of a test configuration: the TLS listener (optional client certificates, the test
/// PKI) and the admin listener, on the addresses `Bindgate::start` fills in.
pub const LISTENERS: &str = r#"
listen:
  address: "{LISTEN}"
  tls: {cert: "{PKI}/server.crt", key: "{PKI}/server.key", client_auth: optional}
admin: {address: "{ADMIN}"}
"#;

/// `each` GETs of `url` on every client, the clients at once (a thread each); the statuses,
/// client by client (0 for a request that failed).
#[allow(dead_code)]
pub fn all_at_once(clients: &[reqwest::blocking::Client], url: &str, each: usize) -> Vec<u16> {
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter()
            .map(|c| {
                s.spawn(move || {
                    (0..each)
                        .map(|_| c.get(url).send().map_or(0, |r| r.status().as_u16()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a client thread"))
            .collect()
    })
}

/// A JWKS server publishing the keys of `signers`, and a recording provider.
pub fn key_server_and_provider(signers: &[&tokens::Signer]) -> (Upstream, Upstream) {
    let jwks = Upstream::start();
    jwks.set_reply(200, &tokens::jwks(signers));
    (jwks, Upstream::start())
}

/// A minimal config: TLS listener with optional client certificates, admin, one upstream route.
pub fn passthrough_config(upstream: SocketAddr) -> String {
    format!(
        r#"
listen:
  address: "{{LISTEN}}"
  tls:
    cert: {{PKI}}/server.crt
    key: {{PKI}}/server.key
    client_auth: optional
admin:
  address: "{{ADMIN}}"
upstreams:
  idp:
    address: "{upstream}"
    client_cert_header: Client-Cert
routes:
  - prefix: /
    upstream: idp
server:
  threads: 1
  grace_period: 1s
  max_body: 1KiB
"#
    )
}

/// `bindgate check` refuses `yaml`, naming every one of `expected` (key path and reason);
/// its output.
#[allow(dead_code)]
pub fn refused_with(pki: &Pki, yaml: &str, expected: &[&str]) -> String {
    let (ok, out) = check(pki, yaml);
    assert!(!ok, "accepted:\n{out}");
    for e in expected {
        assert!(out.contains(e), "missing `{e}` in:\n{out}");
    }
    out
}

/// Runs `bindgate check -c` on `yaml` (with `{PKI}` replaced): exit success and output.
pub fn check(pki: &Pki, yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.yaml");
    std::fs::write(
        &config,
        yaml.replace("{PKI}", &pki.dir.path().display().to_string()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_bindgate"))
        .arg("check")
        .arg("-c")
        .arg(&config)
        .output()
        .expect("run check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shipped `proxy.yaml` as it is, and as a template on the test's PKI and ports
/// (`{PKI}`, `{LISTEN}`, `{PORT}` in its DPoP origin, `{ADMIN}`).
#[allow(dead_code)]
pub fn shipped_proxy_yaml() -> (String, String) {
    let shipped = std::fs::read_to_string(repo_path("proxy.yaml")).expect("proxy.yaml");
    let template = shipped
        .replace("certs/dev", "{PKI}")
        .replace("127.0.0.1:8443", "{LISTEN}")
        .replace("localhost:8443", "localhost:{PORT}")
        .replace("127.0.0.1:9901", "{ADMIN}");
    (shipped, template)
}

/// A process started beside a `Bindgate` (an upgrade), stopped when the test ends, failed or
/// not.
pub struct Reaped(pub std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
