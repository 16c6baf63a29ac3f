#!/usr/bin/env python3
"""A stand-in S3 endpoint for planning benchmarks at a year's scale: ListObjectsV2 over a sorted
in-memory key set, so a listing costs O(log n + page), as on AWS S3 or MinIO.

    python3 bench/list_server.py --port P DIR     # serves DIR as buckets (DIR/<bucket>/<key>)

The real test servers cannot plan a year here: s3s-fs walks the whole bucket for every listing
(its CPU grows with the square of the archive) and moto scans its bucket in Python per listing.
This serves what planning asks for and nothing more:

- ListObjectsV2 (`GET /<bucket>?list-type=2`): prefix, start-after, continuation-token,
  max-keys (at most 1,000), with Key, LastModified, ETag (MD5 of the file, computed once at
  start) and Size, as S3 lists them;
- ListObjectVersions answers 501 NotImplemented (an unversioned store: listings pin by ETag);
- HEAD and GET of an object, with If-Match on the ETag and a byte Range, as a pinned read
  asks; anything else 501.

Path-style requests only; signatures are not checked (this measures the client's side). HTTP/1.1
with keep-alive, a thread per connection. Keys are loaded once at start: objects added later are
not seen.
"""
import argparse, bisect, hashlib, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def load(root):
    """{bucket: (sorted keys, {key: (size, etag, last_modified)})}."""
    buckets = {}
    for bucket in sorted(os.listdir(root)):
        base = os.path.join(root, bucket)
        if not os.path.isdir(base):
            continue
        meta = {}
        for d, _, files in os.walk(base):
            for f in files:
                path = os.path.join(d, f)
                key = os.path.relpath(path, base).replace(os.sep, "/")
                with open(path, "rb") as fh:
                    body = fh.read()
                st = os.stat(path)
                modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(st.st_mtime))
                meta[key] = (len(body), '"' + hashlib.md5(body).hexdigest() + '"', modified)
        buckets[bucket] = (sorted(meta), meta)
    return buckets


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: with Nagle's algorithm the body waits for the
    # client's delayed ACK (~40 ms per request).
    disable_nagle_algorithm = True
    buckets = {}
    root = ""

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", ctype="application/xml", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                f"<Message>{escape(message)}</Message></Error>").encode()
        self.reply(status, body)

    def target(self):
        url = urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        bucket = unquote(parts[0])
        key = unquote(parts[1]) if len(parts) > 1 else ""
        query = parse_qs(url.query, keep_blank_values=True)
        return bucket, key, query

    def do_GET(self):
        bucket, key, query = self.target()
        if bucket not in self.buckets:
            return self.error(404, "NoSuchBucket", f"no bucket {bucket}")
        if key:
            return self.object(bucket, key)
        if "versions" in query:
            return self.error(501, "NotImplemented", "ListObjectVersions is not implemented")
        if query.get("list-type") != ["2"]:
            return self.error(501, "NotImplemented", "only ListObjectsV2 lists here")
        self.list_v2(bucket, query)

    def do_HEAD(self):
        bucket, key, _ = self.target()
        if bucket not in self.buckets or not key:
            return self.error(404, "NoSuchKey", "no such key")
        self.object(bucket, key)

    def object(self, bucket, key):
        keys, meta = self.buckets[bucket]
        if key not in meta:
            return self.error(404, "NoSuchKey", f"no key {key}")
        size, etag, modified = meta[key]
        match = self.headers.get("If-Match")
        if match is not None and match.strip() not in ("*", etag):
            return self.error(412, "PreconditionFailed", "If-Match does not hold")
        first, last = 0, size - 1
        ranged = self.headers.get("Range")
        if ranged:
            lo, _, hi = ranged.removeprefix("bytes=").partition("-")
            first = int(lo) if lo else max(size - int(hi), 0)
            last = min(int(hi), size - 1) if lo and hi else size - 1
            if first >= size:
                return self.error(416, "InvalidRange", f"{ranged} of {size} bytes")
        body = b""
        if self.command == "GET":
            with open(os.path.join(self.root, bucket, key), "rb") as fh:
                fh.seek(first)
                body = fh.read(last - first + 1)
        self.send_response(206 if ranged else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        if ranged:
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.strptime(modified, "%Y-%m-%dT%H:%M:%S.000Z")))
        self.end_headers()
        self.wfile.write(body)

    def list_v2(self, bucket, query):
        keys, meta = self.buckets[bucket]
        first = lambda name: query.get(name, [""])[0]  # noqa: E731
        prefix = first("prefix")
        after = max(first("start-after"), first("continuation-token"))
        limit = min(int(first("max-keys") or 1000), 1000)
        i = bisect.bisect_right(keys, after) if after else bisect.bisect_left(keys, prefix)
        i = max(i, bisect.bisect_left(keys, prefix))
        page = []
        while i < len(keys) and keys[i].startswith(prefix) and len(page) < limit:
            page.append(keys[i])
            i += 1
        truncated = i < len(keys) and keys[i].startswith(prefix)
        out = [f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="{NS}">',
               f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>",
               f"<KeyCount>{len(page)}</KeyCount><MaxKeys>{limit}</MaxKeys>",
               f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>"]
        if first("continuation-token"):
            out.append(f"<ContinuationToken>{escape(first('continuation-token'))}</ContinuationToken>")
        if truncated:
            out.append(f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>")
        for k in page:
            size, etag, modified = meta[k]
            out.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{modified}</LastModified>"
                       f"<ETag>{escape(etag)}</ETag><Size>{size}</Size>"
                       f"<StorageClass>STANDARD</StorageClass></Contents>")
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode())

    def do_PUT(self):
        self.error(501, "NotImplemented", "read-only stand-in")

    do_POST = do_DELETE = do_PUT


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("root")
    args = ap.parse_args()
    Handler.root = args.root
    Handler.buckets = load(args.root)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    n = sum(len(k) for k, _ in Handler.buckets.values())
    print(f"listing {n} objects on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
