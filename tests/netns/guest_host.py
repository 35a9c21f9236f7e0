#!/usr/bin/env python3
"""The host side of one qemu guest instance, run inside the instance's network namespace.

It plays what GCE's host gives a VM on 169.254.169.254:

  port 80    the metadata server (`/computeMetadata/v1/...`, long-polls included), relayed
             to the GCP emulator's metadata root of this instance; and Secret Manager
             (`/v1/...`), relayed to the emulator's API (the guest has no DNS or TLS to
             Google; its units get this endpoint from systemd's DefaultEnvironment)
  port 8081  the guest's apt repository (a directory of .deb files, Packages, Release)

Usage: guest_host.py LISTEN_ADDR METADATA_ROOT API_ROOT REPO_DIR
"""

import functools
import http.server
import sys
import threading
import urllib.error
import urllib.request

# Headers a GCE client sends or reads that matter to the emulator; hop-by-hop ones are not
# relayed.
FORWARD_REQUEST = ("metadata-flavor", "authorization", "content-type")
FORWARD_RESPONSE = ("content-type", "etag", "metadata-flavor")
# Longer than the longest metadata long-poll the startup script's watcher asks for (300 s).
UPSTREAM_TIMEOUT = 400


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    md_root = ""
    api_root = ""

    def log_message(self, fmt, *args):  # quiet: the test reads the guest's own reports
        pass

    def relay(self):
        if self.path.startswith("/computeMetadata/"):
            url = self.md_root + self.path
        elif self.path.startswith("/v1/"):
            url = self.api_root + self.path
        else:
            self.answer(404, b"not found\n", {})
            return
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else None
        req = urllib.request.Request(url, data=body, method=self.command)
        for h in FORWARD_REQUEST:
            if self.headers.get(h) is not None:
                req.add_header(h, self.headers[h])
        try:
            with urllib.request.urlopen(req, timeout=UPSTREAM_TIMEOUT) as r:
                self.answer(r.status, r.read(), r.headers)
        except urllib.error.HTTPError as e:
            self.answer(e.code, e.read(), e.headers)
        except OSError:
            self.answer(502, b"upstream unreachable\n", {})

    def answer(self, status, body, headers):
        self.send_response(status)
        for h in FORWARD_RESPONSE:
            v = headers.get(h) if headers else None
            if v is not None:
                self.send_header(h, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = relay
    do_PUT = relay
    do_POST = relay


class Repo(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass


def main():
    if len(sys.argv) != 5:
        sys.exit("usage: guest_host.py LISTEN_ADDR METADATA_ROOT API_ROOT REPO_DIR")
    addr, md_root, api_root, repo = sys.argv[1:]
    Relay.md_root = md_root.rstrip("/")
    Relay.api_root = api_root.rstrip("/")
    relay = http.server.ThreadingHTTPServer((addr, 80), Relay)
    files = http.server.ThreadingHTTPServer(
        (addr, 8081), functools.partial(Repo, directory=repo)
    )
    threading.Thread(target=files.serve_forever, daemon=True).start()
    print("ready", flush=True)
    relay.serve_forever()


if __name__ == "__main__":
    main()
