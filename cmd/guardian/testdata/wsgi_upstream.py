"""A permissive upstream for guardian's attack tests: Python's own WSGI server and
http.cookies, which read cookies and headers the way many upstreams do (quoted and
escaped cookie values, pairs split on white space, X_Foo read as X-Foo).

GET /login?NAME sets sid=SESS-NAME; /slow sleeps a second; anything else answers JSON:
{"cookies": {name: value} as http.cookies reads them, "headers": every HTTP_* variable,
"body": the request body}.
Prints its port on the first line of stdout.
"""
import json
import socketserver
import sys
import time
from http.cookies import SimpleCookie
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


class Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


def app(environ, start):
    path = environ.get("PATH_INFO", "")
    if path == "/login":
        start("200 OK", [("Content-Type", "text/plain"),
                         ("Set-Cookie", "sid=SESS-%s; Path=/" % environ.get("QUERY_STRING", ""))])
        return [b"logged in\n"]
    if path == "/slow":
        time.sleep(1)
    jar = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except Exception:
        pass
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = json.dumps({
        "body": environ["wsgi.input"].read(length).decode("latin-1"),
        "cookies": {k: m.value for k, m in jar.items()},
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
    })
    start("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]


def main():
    srv = make_server("127.0.0.1", 0, app, server_class=Threading, handler_class=Quiet)
    print(srv.server_port, flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
