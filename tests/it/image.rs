//! The OCI image (`scripts/image.sh`): built twice to the same digest, unpacked by umoci, and
//! the binary run from its root filesystem as the image says (entrypoint, user, working
//! folder, environment): `check` on a configuration put where the image expects it, then `run`
//! serving a request with the development certificates.

use crate::harness::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds the image of the binary under test into `out`; its manifest digest.
fn build(out: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/image.sh");
    let run = Command::new(script)
        .args(["--binary", env!("CARGO_BIN_EXE_bindgate"), "--tag", "test"])
        .arg("--out")
        .arg(out)
        .output()
        .expect("scripts/image.sh");
    let said = String::from_utf8_lossy(&run.stdout).to_string();
    assert!(
        run.status.success(),
        "image.sh failed:\n{said}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    said.lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .expect("a digest line")
        .to_string()
}

/// How the image says to run it (the runtime configuration umoci writes from the image's).
struct Process {
    args: Vec<String>,
    uid: u64,
    gid: u64,
    cwd: String,
    env: Vec<(String, String)>,
}

fn process(bundle: &Path) -> Process {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    let p = &config["process"];
    Process {
        args: p["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect(),
        uid: p["user"]["uid"].as_u64().unwrap(),
        gid: p["user"]["gid"].as_u64().unwrap(),
        cwd: p["cwd"].as_str().unwrap().to_string(),
        env: p["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_str()?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// The image's program run inside `rootfs` as its user (chroot), with `args` in place of
/// the image's own arguments when given.
fn command(rootfs: &Path, p: &Process, args: Option<&[&str]>) -> Command {
    // The entrypoint is the program; the rest are its arguments.
    assert_eq!(p.args[0], "/usr/local/bin/bindgate");
    // Found on this machine's PATH: the child's environment is the image's.
    let chroot = ["/usr/sbin/chroot", "/usr/bin/chroot", "/sbin/chroot"]
        .into_iter()
        .find(|c| Path::new(c).is_file())
        .expect("chroot (coreutils)");
    let mut cmd = Command::new(chroot);
    cmd.arg(format!("--userspec={}:{}", p.uid, p.gid))
        .arg(rootfs)
        .arg(&p.args[0]);
    match args {
        Some(a) => cmd.args(a),
        None => cmd.args(&p.args[1..]),
    };
    cmd.env_clear().envs(p.env.iter().cloned());
    cmd
}

#[test]
fn the_image_builds_reproducibly_and_its_binary_serves() {
    let uid = Command::new("id").arg("-u").output().unwrap();
    // chroot and the owners umoci restores need root; the suite runs as root in CI (say so
    // if not: this is the one test that needs it).
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the image test runs the unpacked image with chroot, which needs root"
    );
    let work = tempfile::tempdir().unwrap();
    let first = build(&work.path().join("one"));
    let second = build(&work.path().join("two"));
    assert_eq!(first, second, "the same binary gives the same image digest");

    let bundle = work.path().join("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", work.path().join("one").display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        unpack.status.success(),
        "{}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    let p = process(&bundle);
    assert_eq!(p.args[1..], ["run", "-c", "/etc/bindgate/proxy.yaml"]);
    assert_eq!((p.uid, p.gid), (10001, 10001), "not root");
    assert_eq!(p.cwd, "/etc/bindgate");
    let rootfs = bundle.join("rootfs");
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("bindgate:x:10001:10001:"), "{passwd}");
    assert!(rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file());

    // The pod's own configuration (deploy/kubernetes), its files where the pod mounts them,
    // its addresses moved to the test's: the provider next door is a server that answers
    // every path with a key set (the JWKS and the proxied requests alike).
    let pki = Pki::new();
    let upstream = Upstream::start();
    let signer = crate::harness::tokens::Signer::new(jsonwebtoken::Algorithm::ES256, "k1");
    upstream.set_reply(200, &crate::harness::tokens::jwks(&[&signer]));
    let pod = Pod::read();
    let yaml = pod
        .proxy_yaml
        .replace("0.0.0.0:8443", "127.0.0.1:0")
        .replace("0.0.0.0:9901", "127.0.0.1:0")
        .replace("127.0.0.1:8080", &upstream.addr.to_string());
    let etc: PathBuf = rootfs.join("etc/bindgate");
    let mounted = [
        ("tls/tls.crt", pki.read("server.crt")),
        ("tls/tls.key", pki.read("server.key")),
        ("client-ca/ca.crt", pki.read("ca.crt")),
        (
            "tokens/master.token",
            b"a-master-token-of-32-bytes-or-so".to_vec(),
        ),
        (
            "tokens/session-store.token",
            b"a-session-store-token-32-bytes-x".to_vec(),
        ),
    ];
    for (path, content) in mounted {
        let to = etc.join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(&to, content).unwrap();
        // Readable by the image's user, as the pod's fsGroup makes its secret volumes.
        std::os::unix::fs::chown(&to, Some(p.uid as u32), Some(p.gid as u32)).unwrap();
    }
    std::fs::write(etc.join("proxy.yaml"), yaml).unwrap();

    // The pod runs what the image says, as its user, probing the port it exposes.
    assert_eq!(pod.run_as_user, p.uid);
    assert_eq!(pod.admin_port, 9901);
    assert!(pod.proxy_yaml.contains("\"0.0.0.0:9901\""));
    let exposed = exposed_ports(&work.path().join("one"));
    assert_eq!(exposed, ["8443/tcp", "9901/tcp"]);

    let check = command(
        &rootfs,
        &p,
        Some(&["check", "-c", "/etc/bindgate/proxy.yaml"]),
    )
    .output()
    .unwrap();
    assert!(
        check.status.success(),
        "check in the image: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    let log = work.path().join("run.log");
    let mut child = command(&rootfs, &p, None)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(work.path().join("run.err")).unwrap())
        .spawn()
        .unwrap();
    let _reap = scopeguard(&mut child);
    let read = || {
        std::fs::read_to_string(work.path().join("run.err")).unwrap_or_default()
            + &std::fs::read_to_string(&log).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (port, admin) = loop {
        if let Some(ports) = startup_ports(&read()) {
            break ports;
        }
        assert!(Instant::now() < deadline, "no startup line:\n{}", read());
        std::thread::sleep(Duration::from_millis(20));
    };
    // The admin port answers the probes a pod would send.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reqwest::blocking::get(format!("http://127.0.0.1:{admin}/readyz"))
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "not ready:\n{}", read());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ca = reqwest::Certificate::from_pem(&pki.read("ca.crt")).unwrap();
    let client = reqwest::blocking::Client::builder()
        .use_native_tls()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .resolve("localhost", ([127, 0, 0, 1], port).into())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let answer = client
        .get(format!("https://localhost:{port}/from-the-image"))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(upstream
        .wait_for(2)
        .iter()
        .any(|r| r.target == "/from-the-image"));
    // It runs as the image's user, and wrote its pid file where that user may.
    let pid = std::fs::read_to_string(rootfs.join("run/bindgate/bindgate.pid")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("10001")),
        "{status}"
    );
}

/// What the test takes from `deploy/kubernetes/bindgate-pod.yaml`.
struct Pod {
    proxy_yaml: String,
    run_as_user: u64,
    admin_port: u64,
}

impl Pod {
    fn read() -> Pod {
        use serde::Deserialize;
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/bindgate-pod.yaml");
        let text = std::fs::read_to_string(path).unwrap();
        let docs: Vec<serde_json::Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|d| serde_json::Value::deserialize(d).unwrap())
            .filter(|d| !d.is_null())
            .collect();
        let config = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
        let pod = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
        let bindgate = pod["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "bindgate")
            .unwrap();
        let admin_port = bindgate["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == bindgate["readinessProbe"]["httpGet"]["port"])
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap();
        assert_eq!(bindgate["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(bindgate["livenessProbe"]["httpGet"]["path"], "/healthz");
        Pod {
            proxy_yaml: config["data"]["proxy.yaml"].as_str().unwrap().to_string(),
            run_as_user: bindgate["securityContext"]["runAsUser"].as_u64().unwrap(),
            admin_port,
        }
    }
}

/// The image configuration's `ExposedPorts`, read from the layout (index → manifest → config).
fn exposed_ports(layout: &Path) -> Vec<String> {
    let read = |digest: &str| -> serde_json::Value {
        let hex = digest.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    let config = read(manifest["config"]["digest"].as_str().unwrap());
    let mut ports: Vec<String> = config["config"]["ExposedPorts"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    ports.sort();
    ports
}

/// Kills the child when the test ends, passed or not.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Reap<'a>(&'a mut std::process::Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Reap(child)
}
