"""The lab's stand-in for an operator's pager: Alertmanager's webhook receiver, which appends
each notification it is sent to a file, one JSON document per line.

    python3 lab_pager.py PORT FILE
"""

import http.server
import json
import sys

PORT, LOG = int(sys.argv[1]), sys.argv[2]


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            self.send_error(400, "not JSON")
            return
        with open(LOG, "a") as f:
            f.write(json.dumps(doc) + "\n")
        self.send_response(200)
        self.end_headers()


http.server.HTTPServer(("127.0.0.1", PORT), Hook).serve_forever()
