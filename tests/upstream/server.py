"""A plain HTTP/1.1 upstream in a process of its own, for the balancing tests: it answers every
GET with 200 and its name, keeps connections alive, and prints the port it bound (0: the
kernel's choice) on its first line. `server.py NAME [IP:]PORT [sick]` (IP default 127.0.0.1): a
sick one answers `/healthz` with 503 (and everything else as usual)."""

import http.server
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = sys.argv[1].encode()
        sick = len(sys.argv) > 3 and sys.argv[3] == "sick"
        self.send_response(503 if sick and self.path == "/healthz" else 200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ip, _, port = sys.argv[2].rpartition(":")
server = http.server.ThreadingHTTPServer((ip or "127.0.0.1", int(port)), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
