"""The floor: the fastest honest Python implementation of the benchmarked read endpoints.

A bare WSGI app (no framework) that answers the requests bench/run.py sends with hand-written
SQL over psycopg 3 (one connection per worker thread, opened after the fork and reused) and
orjson, returning the same JSON as the service. It is the yardstick: the service's req/s is
reported as a fraction of this.

It does the same work the service does:

* authenticates the Bearer token exactly like cdrs/auth.py: one indexed lookup by prefix and a
  constant-time HMAC-SHA256 compare, cached per process for CDR_TOKEN_CACHE_SECONDS (default
  10, as the service), liveness (enabled, expiry), scope ``read``, and the at-most-once-a-minute
  ``last_used_at`` touch;
* counts where the service counts: SUM(rows) of cdrs_counter for an unfiltered list, COUNT(*)
  with the same WHERE otherwise, nothing with ``count=false``;
* verifies and issues the service's own signed keyset cursors (Django's TimestampSigner
  format, re-implemented here: same SECRET_KEY, same salt, same fingerprint), so a cursor
  obtained from the service works here and vice versa;
* formats ids (base64 of the decimal) and the exact decimal ``cost`` like the service, and
  has PostgreSQL render the timestamps (RFC 3339 Z, seconds) as the service does.

Supported: GET /api/cdrs with top, skip, count, cursor, search, filter (only the
``<string field> eq '<text>'`` form the benchmark uses), started_after, started_before, caller,
callee; GET /api/cdrs/{id}. Anything else is a 400/404 in the PortSIP error shape.

Run it like the service:
    DATABASE_URL=... SECRET_KEY=... BIND=127.0.0.1:8902 \
        .venv/bin/gunicorn -c gunicorn.conf.py --chdir bench floor:application
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import sys
import threading
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: cdrs.fields

from cdrs.fields import (
    ALL_FIELD_NAMES,
    PUBLIC_FIELD_NAMES,
    SEARCH_FIELD_NAMES,
    TIMESTAMP_FIELD_NAMES,
)

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cdrbench")
SECRET_KEY = os.environ["SECRET_KEY"]
PEPPER = (os.environ.get("CDR_TOKEN_PEPPER") or SECRET_KEY).encode()
TOKEN_TTL = int(os.environ.get("CDR_TOKEN_CACHE_SECONDS") or "10")
LAST_USED_INTERVAL = timedelta(seconds=60)

# --- fields: the service's own list (cdrs/fields.py is plain Python, no framework) -------------
ALL_COLS = ALL_FIELD_NAMES
PUBLIC_COLS = PUBLIC_FIELD_NAMES
TS_COLS = TIMESTAMP_FIELD_NAMES
SEARCH_COLS = SEARCH_FIELD_NAMES
EQ_FIELDS = frozenset(
    ("caller", "callee", "call_id", "caller_domain", "callee_domain", "trunk", "destination")
)
# Exactly the expression of the trigram index cdr_search_trgm_idx (migration 0002).
SEARCH_DOC = "UPPER(" + " || E'\\n' || ".join(f'"cdrs_cdr"."{c}"' for c in SEARCH_COLS) + ")"
# Timestamps leave PostgreSQL already formatted (RFC 3339, Z, whole seconds), as the service
# selects them (cdrs/expressions.py Rfc3339): no datetime parsing and formatting in Python.
TS_SQL = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"


def _select(cols: tuple[str, ...]) -> str:
    return "SELECT " + ", ".join(TS_SQL.format(c) if c in TS_COLS else c for c in cols)


LIST_SELECT = _select(PUBLIC_COLS) + " FROM cdrs_cdr"
DETAIL_BILLING = _select(ALL_COLS) + " FROM cdrs_cdr WHERE id = %s"
DETAIL_PUBLIC = _select(PUBLIC_COLS) + " FROM cdrs_cdr WHERE id = %s"
ORDER = " ORDER BY started_at DESC, id DESC"
DEFAULT_ORDER_STR = ["started_at desc", "id desc"]
KNOWN = frozenset(
    (
        "top",
        "skip",
        "count",
        "cursor",
        "search",
        "filter",
        "started_after",
        "started_before",
        "caller",
        "callee",
    )
)
PLAIN_COLS = {"caller": "caller", "callee": "callee"}
_FILTER_RE = re.compile(r"\s*([a-z_]+)\s+eq\s+'((?:[^']|'')*)'\s*")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
_DECIMAL_RE = re.compile(rb"[1-9][0-9]{0,18}")
_COST_MARK = "\x00cost\x00"
_COST_JSON = orjson.dumps(_COST_MARK)

# --- one connection per worker thread (gthread) or process (sync), opened lazily after the
# fork and reused: the service's Django connections are per thread too -------------------------
_local = threading.local()


def conn() -> psycopg.Connection:
    c = getattr(_local, "conn", None)
    if c is None or c.closed:
        c = _local.conn = psycopg.connect(DATABASE_URL, autocommit=True, options="-c TimeZone=UTC")
    return c


# --- formatting, copied from cdrs/ids.py and cdrs/values.py ----------------------------------
def encode_id(value: int) -> str:
    return base64.b64encode(str(value).encode("ascii")).decode("ascii")


def decode_id(public: str) -> int | None:
    if len(public) > 40:
        return None
    stripped = public.rstrip("=")
    padded = stripped + "=" * (-len(stripped) % 4)
    if len(public) != len(stripped) and public != padded:
        return None
    try:
        raw = base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if base64.b64encode(raw).decode("ascii").rstrip("=") != stripped:
        return None
    if not _DECIMAL_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= 2**63 - 1 else None


def parse_rfc3339(text: str) -> datetime:
    m = _RFC3339_RE.fullmatch(text)
    if m is None:
        raise ValueError(text)
    frac = m.group(7) or ""
    norm = text[:10] + "T" + text[11:19] + frac[:7] + m.group(8).upper()
    return datetime.fromisoformat(norm.replace("Z", "+00:00")).astimezone(UTC)


def item_of(cols: tuple[str, ...], row: tuple) -> dict:
    item = dict(zip(cols, row, strict=True))
    item["id"] = encode_id(row[0])
    return item


# --- Django-compatible signed cursors (django.core.signing, TimestampSigner) ----------------
_CURSOR_SALT = "cdrs.cursor.v1"
_SIGN_KEY = hashlib.sha256((_CURSOR_SALT + "signer").encode() + SECRET_KEY.encode()).digest()
_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _b62(n: int) -> str:
    out = ""
    while n > 0:
        n, r = divmod(n, 62)
        out = _B62[r] + out
    return out or "0"


def _signature(value: str) -> str:
    mac = hmac.new(_SIGN_KEY, value.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).strip(b"=").decode()


def sign_cursor(obj: dict) -> str:
    data = orjson.dumps(obj)  # compact, like Django's JSONSerializer for this ASCII payload
    packed = zlib.compress(data)
    prefix = ""
    if len(packed) < len(data) - 1:
        data, prefix = packed, "."
    value = prefix + base64.urlsafe_b64encode(data).strip(b"=").decode()
    value = f"{value}:{_b62(int(time.time()))}"
    return f"{value}:{_signature(value)}"


def unsign_cursor(text: str) -> dict | None:
    if len(text) > 4096 or text.count(":") < 2:
        return None
    value, sig = text.rsplit(":", 1)
    if not hmac.compare_digest(sig, _signature(value)):
        return None
    b64 = value.rsplit(":", 1)[0]
    compressed = b64.startswith(".")
    b64 = b64[1:] if compressed else b64
    try:
        data = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
        if compressed:
            data = zlib.decompress(data)
        obj = orjson.loads(data)
    except (ValueError, zlib.error):
        return None
    return obj if isinstance(obj, dict) else None


def fingerprint(filter_text: str | None, search: str | None, plain: dict[str, str]) -> str:
    identity = repr((filter_text, search, sorted(plain.items()), DEFAULT_ORDER_STR))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


# --- authentication, as cdrs/auth.py ---------------------------------------------------------
_token_cache: dict[str, tuple[list, float]] = {}


def authenticate(environ: dict) -> tuple[list | None, str]:
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, plain = header.partition(" ")
    plain = plain.strip()
    if scheme.lower() != "bearer" or not plain or " " in plain:
        return None, "malformed Authorization header"
    if not plain.startswith("cdr_") or len(plain) > 200:
        return None, "invalid token"
    prefix, sep, secret = plain[4:].partition("_")
    if not sep or len(prefix) != 10 or len(secret) < 20:
        return None, "invalid token"
    digest = hmac.new(PEPPER, plain.encode(), hashlib.sha256).hexdigest()
    token = None
    if TOKEN_TTL > 0:
        hit = _token_cache.get(digest)
        if hit is not None and time.monotonic() - hit[1] < TOKEN_TTL:
            token = hit[0]
    if token is None:
        row = (
            conn()
            .execute(
                "SELECT id, digest, scope_read, scope_billing, scope_write, domains, "
                "expires_at, enabled, last_used_at FROM cdrs_api_token WHERE prefix = %s",
                (prefix,),
            )
            .fetchone()
        )
        if row is None or not hmac.compare_digest(row[1], digest):
            return None, "invalid token"
        token = list(row)
        if TOKEN_TTL > 0:
            if len(_token_cache) >= 1024:
                _token_cache.clear()
            _token_cache[digest] = (token, time.monotonic())
    now = datetime.now(UTC)
    if not token[7] or (token[6] is not None and token[6] <= now):
        return None, "token is disabled or expired"
    if token[8] is None or now - token[8] >= LAST_USED_INTERVAL:
        token[8] = now
        conn().execute(
            "UPDATE cdrs_api_token SET last_used_at = %s WHERE id = %s AND NOT "
            "(last_used_at IS NOT NULL AND last_used_at >= %s)",
            (now, token[0], now - LAST_USED_INTERVAL),
        )
    return token, ""


# --- responses --------------------------------------------------------------------------------
_CODES = {400: "VALIDATE_FAILED", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}
_STATUS = {
    200: "200 OK",
    400: "400 Bad Request",
    401: "401 Unauthorized",
    403: "403 Forbidden",
    404: "404 Not Found",
    500: "500 Internal Server Error",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _respond(start_response, status: int, body: bytes, extra=()) -> list[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    headers.extend(extra)
    start_response(_STATUS.get(status, f"{status} Error"), headers)
    return [body]


def _error(start_response, status: int, message: str) -> list[bytes]:
    code = _CODES.get(status, "UNKNOWN")
    body = orjson.dumps({"errors": [{"code": code, "message": message, "detail": {}}]})
    extra = [("WWW-Authenticate", "Bearer")] if status == 401 else []
    return _respond(start_response, status, body, extra)


def _int(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not text.lstrip("-").isdigit() or len(text) > 12 or not lo <= int(text) <= hi:
        raise HttpError(400, f"{name}: must be between {lo} and {hi}")
    return int(text)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def list_cdrs(token: list, query: str) -> bytes:
    params: dict[str, str] = {}
    for k, v in parse_qsl(query, keep_blank_values=True):
        if k not in KNOWN:
            raise HttpError(400, f"{k[:40]}: unknown query option")
        if k in params:
            raise HttpError(400, f"{k}: given more than once")
        params[k] = v
    top = _int(params, "top", 100, 1, 1000)
    skip = _int(params, "skip", 0, 0, 2**31 - 1)
    count_opt = params.get("count")
    if count_opt not in (None, "true", "false"):
        raise HttpError(400, "count: must be true or false")

    where: list[str] = []
    args: list = []
    if token[5]:  # domain-limited token
        where.append("(LOWER(caller_domain) = ANY(%s) OR LOWER(callee_domain) = ANY(%s))")
        args += [list(token[5]), list(token[5])]
    filter_text = params.get("filter")
    if filter_text is not None:
        m = _FILTER_RE.fullmatch(filter_text)
        if m is None or m.group(1) not in EQ_FIELDS:
            raise HttpError(400, "filter: the floor only supports <string field> eq '<text>'")
        where.append(f"{m.group(1)} = %s")
        args.append(m.group(2).replace("''", "'"))
    search = params.get("search")
    if search:
        if len(search) > 200 or any(ord(c) < 32 for c in search):
            raise HttpError(400, "search: invalid")
        where.append(SEARCH_DOC + " LIKE '%%' || UPPER(%s COLLATE \"C\") || '%%'")
        args.append(_like_escape(search))
    plain: dict[str, str] = {}
    for name, op in (("started_after", ">="), ("started_before", "<")):
        if name in params:
            plain[name] = params[name]
            try:
                args.append(parse_rfc3339(params[name]))
            except ValueError:
                raise HttpError(400, f"{name}: expected an RFC 3339 timestamp") from None
            where.append(f"started_at {op} %s")
    for name, col in PLAIN_COLS.items():
        if name in params:
            plain[name] = params[name]
            where.append(f"{col} = %s")
            args.append(params[name])

    fp = fingerprint(filter_text, search, plain)
    page_where = list(where)
    page_args = list(args)
    cursor = params.get("cursor")
    if cursor is not None:
        if "skip" in params:
            raise HttpError(400, "cursor: cannot be combined with skip")
        payload = unsign_cursor(cursor)
        if payload is None:
            raise HttpError(400, "cursor: invalid cursor")
        if payload.get("f") != fp:
            raise HttpError(400, "cursor: cursor belongs to a different query")
        values = payload.get("v")
        if not isinstance(values, list) or len(values) != 2 or not isinstance(values[1], int):
            raise HttpError(400, "cursor: corrupt cursor")
        try:
            after_ts = parse_rfc3339(values[0])
        except (ValueError, TypeError):
            raise HttpError(400, "cursor: corrupt cursor") from None
        page_where.append("started_at <= %s AND (started_at < %s OR (started_at = %s AND id < %s))")
        page_args += [after_ts, after_ts, after_ts, values[1]]

    db = conn()
    count = -1
    if count_opt != "false":
        if not where:
            count = int(db.execute("SELECT SUM(rows) FROM cdrs_counter").fetchone()[0] or 0)
        else:
            sql = "SELECT COUNT(*) FROM cdrs_cdr WHERE " + " AND ".join(where)
            count = db.execute(sql, args).fetchone()[0]

    sql = LIST_SELECT
    if page_where:
        sql += " WHERE " + " AND ".join(page_where)
    sql += ORDER + " LIMIT %s"
    page_args.append(top + 1)
    if skip:
        sql += " OFFSET %s"
        page_args.append(skip)
    rows = db.execute(sql, page_args).fetchall()
    next_cursor = None
    if len(rows) > top:
        rows = rows[:top]
        last = rows[-1]
        next_cursor = sign_cursor({"f": fp, "v": [last[7], last[0]]})
    items = [item_of(PUBLIC_COLS, r) for r in rows]
    return orjson.dumps({"count": count, "items": items, "next_cursor": next_cursor})


def detail_cdr(token: list, public_id: str) -> bytes:
    cdr_id = decode_id(public_id)
    if cdr_id is None:
        raise HttpError(404, "CDR not found")
    billing = bool(token[3])
    sql, args = (DETAIL_BILLING if billing else DETAIL_PUBLIC), [cdr_id]
    if token[5]:
        sql += " AND (LOWER(caller_domain) = ANY(%s) OR LOWER(callee_domain) = ANY(%s))"
        args += [list(token[5]), list(token[5])]
    row = conn().execute(sql, args).fetchone()
    if row is None:
        raise HttpError(404, "CDR not found")
    if not billing:
        return orjson.dumps({"items": [item_of(PUBLIC_COLS, row)]})
    item = item_of(ALL_COLS, row)
    cost = item["cost"]
    if cost is None:
        return orjson.dumps({"items": [item]})
    # orjson cannot write a Decimal as a number: write a marker, then splice the exact digits.
    item["cost"] = _COST_MARK
    return orjson.dumps({"items": [item]}).replace(_COST_JSON, format(cost, "f").encode(), 1)


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if environ.get("REQUEST_METHOD") != "GET":
        return _error(start_response, 404, "not found")
    if path == "/healthz":
        return _respond(start_response, 200, b'{"status":"ok"}')
    path = path.rstrip("/")
    if not path.startswith("/api/cdrs"):
        return _error(start_response, 404, "not found")
    try:
        token, why = authenticate(environ)
        if token is None:
            return _error(start_response, 401, why)
        if not token[2]:
            return _error(start_response, 403, "this token lacks the 'read' scope")
        if path == "/api/cdrs":
            body = list_cdrs(token, environ.get("QUERY_STRING", ""))
        elif path.startswith("/api/cdrs/") and "/" not in path[10:]:
            body = detail_cdr(token, path[10:])
        else:
            return _error(start_response, 404, "not found")
    except HttpError as exc:
        return _error(start_response, exc.status, exc.message)
    except psycopg.OperationalError:
        _local.conn = None
        return _error(start_response, 500, "database error")
    return _respond(start_response, 200, body)
