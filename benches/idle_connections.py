#!/usr/bin/env python3
"""Memory per idle keep-alive connection (BENCHMARKS.md, issue 20).

    python3 benches/idle_connections.py target/release/bindgate 2000 [BINARY ...]

For each binary: runs it on the shipped proxy.yaml (its development certificates, made by
`scripts/run.sh` or `bindgate dev-certs`; ports 18443/19901, one worker), opens N mTLS
connections with client1's certificate, sends each one request bindgate answers itself (a
session store lookup: 404) and keeps them all open; prints the RSS before and after and the
difference per connection. Needs `ulimit -n` above N + 100.
"""
import os, re, socket, ssl, subprocess, sys, tempfile, time

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
dev = os.path.join(root, "certs", "dev")


def config(tmp):
    text = open(os.path.join(root, "proxy.yaml")).read()
    text = text.replace("certs/dev/", dev + "/")
    text = text.replace("127.0.0.1:8443", "127.0.0.1:18443").replace("127.0.0.1:9901", "127.0.0.1:19901")
    text = re.sub(r"threads: \d+", "threads: 1", text)
    text = text.replace("pid_file: bindgate.pid", f"pid_file: {tmp}/bindgate.pid")
    text = text.replace("upgrade_sock: bindgate.upgrade.sock", f"upgrade_sock: {tmp}/bindgate.sock")
    path = os.path.join(tmp, "proxy.yaml")
    open(path, "w").write(text)
    return path


def measure(binary, n, tmp):
    p = subprocess.Popen([binary, "run", "-c", config(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def rss():
        for line in open(f"/proc/{p.pid}/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1])

    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", 18443), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        time.sleep(0.5)
        token = open(os.path.join(dev, "session-store.token")).read().strip()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.load_cert_chain(os.path.join(dev, "client1.crt"), os.path.join(dev, "client1.key"))
        ctx.set_alpn_protocols(["http/1.1"])
        request = (
            "GET /session-store/rest/v2/sessions HTTP/1.1\r\nHost: localhost\r\n"
            f"Authorization: Bearer {token}\r\nSID: none\r\n\r\n"
        ).encode()
        base = rss()
        conns = []
        deadline = time.time() + 300
        for _ in range(n):
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 18443), timeout=10), server_hostname="localhost")
            s.sendall(request)
            data = b""
            while time.time() < deadline:
                head, sep, body = data.partition(b"\r\n\r\n")
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if sep and m and len(body) >= int(m.group(1)):
                    break
                d = s.recv(4096)
                if not d:
                    break
                data += d
            if not data.startswith(b"HTTP/1.1 404"):
                sys.exit(f"unexpected answer: {data[:80]!r}")
            conns.append(s)
        time.sleep(1)
        after = rss()
        print(
            f"{binary}: RSS {base / 1024:.1f} MiB, with {n} idle keep-alive mTLS connections "
            f"{after / 1024:.1f} MiB: {(after - base) / n:.1f} KiB per connection"
        )
    finally:
        p.terminate()
        p.wait()


if __name__ == "__main__":
    n = int(sys.argv[2])
    for binary in [sys.argv[1]] + sys.argv[3:]:
        with tempfile.TemporaryDirectory() as tmp:
            measure(binary, n, tmp)
