"""The service's read API re-implemented without a framework or a database driver.

Shared by the two hand-written yardsticks of bench/run.py, so they ask PostgreSQL the same SQL
and answer the same bytes, and differ only in what is being compared (server, framework,
driver, concurrency model):

* bench/floor.py: bare WSGI under gunicorn, psycopg 3 (threads);
* bench/peer_fastapi.py: FastAPI under uvicorn, asyncpg (asyncio).

Everything here is what the service does, re-implemented as plainly as possible:

* the Bearer token check of cdrs/auth.py: the token's prefix and HMAC-SHA256 digest (compared
  in constant time), a per-process cache for CDR_TOKEN_CACHE_SECONDS (default 10, as the
  service), liveness (enabled, expiry), scope ``read`` and the at-most-once-a-minute
  ``last_used_at`` touch; the caller runs TOKEN_SQL and TOUCH_SQL on its own driver;
* the list query: SUM(rows) of cdrs_counter for an unfiltered count, COUNT(*) with the same
  WHERE otherwise, nothing with ``count=false``; the page by (started_at, id) DESC;
* the service's own signed keyset cursors (Django's TimestampSigner format: same SECRET_KEY,
  same salt, same fingerprint), so a cursor from the service works here and vice versa;
* ids as base64 of the decimal, the exact decimal ``cost``, and timestamps rendered by
  PostgreSQL (RFC 3339 Z, seconds) as the service selects them.

SQL is written with psycopg's ``%s`` placeholders; ``dollar_params`` turns a statement into
asyncpg's ``$n`` form. Only what the benchmark sends is understood: GET /api/cdrs with top,
skip, count, cursor, search, filter (only ``<string field> eq '<text>'``), started_after,
started_before, caller, callee; GET /api/cdrs/{id}. Anything else is a 400/404 in the
PortSIP error shape.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

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
DOMAIN_SQL = "(LOWER(caller_domain) = ANY(%s) OR LOWER(callee_domain) = ANY(%s))"
COUNTER_SQL = "SELECT SUM(rows) FROM cdrs_counter"
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
TOKEN_SQL = (
    "SELECT id, digest, scope_read, scope_billing, scope_write, domains, "
    "expires_at, enabled, last_used_at FROM cdrs_api_token WHERE prefix = %s"
)
TOUCH_SQL = (
    "UPDATE cdrs_api_token SET last_used_at = %s WHERE id = %s AND NOT "
    "(last_used_at IS NOT NULL AND last_used_at >= %s)"
)
# Indexes into a token row (TOKEN_SQL's columns).
T_ID, T_DIGEST, T_READ, T_BILLING, T_WRITE, T_DOMAINS, T_EXPIRES, T_ENABLED, T_USED = range(9)

_FILTER_RE = re.compile(r"\s*([a-z_]+)\s+eq\s+'((?:[^']|'')*)'\s*")
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)
_DECIMAL_RE = re.compile(rb"[1-9][0-9]{0,18}")
_COST_MARK = "\x00cost\x00"
_COST_JSON = orjson.dumps(_COST_MARK)


@functools.lru_cache(maxsize=256)
def dollar_params(sql: str) -> str:
    """A ``%s`` statement in asyncpg's numbered form: ``%s`` → ``$1, $2, ...``, ``%%`` → ``%``."""
    numbers = iter(range(1, sql.count("%s") + 1))
    return re.sub(r"%[s%]", lambda m: f"${next(numbers)}" if m.group() == "%s" else "%", sql)


# --- errors -----------------------------------------------------------------------------------
_CODES = {400: "VALIDATE_FAILED", 401: "UNAUTHORIZED", 403: "FORBIDDEN", 404: "NOT_FOUND"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_body(status: int, message: str) -> bytes:
    """The service's error shape (PortSIP's); a 401 also carries ``WWW-Authenticate: Bearer``."""
    code = _CODES.get(status, "UNKNOWN")
    return orjson.dumps({"errors": [{"code": code, "message": message, "detail": {}}]})


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


def item_of(cols: tuple[str, ...], row: Sequence) -> dict:
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
def bearer(header: str) -> tuple[str, str]:
    """(prefix, digest) of a well-formed ``Authorization: Bearer cdr_<prefix>_<secret>``."""
    scheme, _, plain = header.partition(" ")
    plain = plain.strip()
    if scheme.lower() != "bearer" or not plain or " " in plain:
        raise HttpError(401, "malformed Authorization header")
    if not plain.startswith("cdr_") or len(plain) > 200:
        raise HttpError(401, "invalid token")
    prefix, sep, secret = plain[4:].partition("_")
    if not sep or len(prefix) != 10 or len(secret) < 20:
        raise HttpError(401, "invalid token")
    return prefix, hmac.new(PEPPER, plain.encode(), hashlib.sha256).hexdigest()


class TokenCache:
    """Token rows by digest, kept TOKEN_TTL seconds in this process (as cdrs/auth.py)."""

    def __init__(self) -> None:
        self._rows: dict[str, tuple[list, float]] = {}

    def get(self, digest: str) -> list | None:
        if TOKEN_TTL <= 0:
            return None
        hit = self._rows.get(digest)
        if hit is not None and time.monotonic() - hit[1] < TOKEN_TTL:
            return hit[0]
        return None

    def put(self, digest: str, row: Sequence | None) -> list:
        """The token of a TOKEN_SQL row, if it matches the digest (else a 401), cached."""
        if row is None or not hmac.compare_digest(row[T_DIGEST], digest):
            raise HttpError(401, "invalid token")
        token = list(row)
        if TOKEN_TTL > 0:
            if len(self._rows) >= 1024:
                self._rows.clear()
            self._rows[digest] = (token, time.monotonic())
        return token


def check_token(token: list) -> tuple | None:
    """401 for a disabled or expired token; the TOUCH_SQL arguments when ``last_used_at``
    is due (at most once a minute), else None."""
    now = datetime.now(UTC)
    if not token[T_ENABLED] or (token[T_EXPIRES] is not None and token[T_EXPIRES] <= now):
        raise HttpError(401, "token is disabled or expired")
    if token[T_USED] is None or now - token[T_USED] >= LAST_USED_INTERVAL:
        token[T_USED] = now
        return (now, token[T_ID], now - LAST_USED_INTERVAL)
    return None


def require_read(token: list) -> None:
    if not token[T_READ]:
        raise HttpError(403, "this token lacks the 'read' scope")


# --- GET /api/cdrs ----------------------------------------------------------------------------
@dataclass(slots=True)
class ListPlan:
    """The statements of one list request: the count (None with count=false) and the page."""

    count_sql: str | None
    count_args: list
    page_sql: str
    page_args: list
    top: int
    fingerprint: str


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


def plan_list(token: list, query: Iterable[tuple[str, str]]) -> ListPlan:
    """The SQL of a list request from its decoded query pairs; HttpError(400) when invalid."""
    params: dict[str, str] = {}
    for k, v in query:
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
    domains = token[T_DOMAINS]
    if domains:  # domain-limited token
        where.append(DOMAIN_SQL)
        args += [list(domains), list(domains)]
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

    count_sql = None
    if count_opt != "false":
        count_sql = (
            "SELECT COUNT(*) FROM cdrs_cdr WHERE " + " AND ".join(where) if where else COUNTER_SQL
        )
    sql = LIST_SELECT
    if page_where:
        sql += " WHERE " + " AND ".join(page_where)
    sql += ORDER + " LIMIT %s"
    page_args.append(top + 1)
    if skip:
        sql += " OFFSET %s"
        page_args.append(skip)
    return ListPlan(count_sql, args, sql, page_args, top, fp)


def list_body(plan: ListPlan, count: int | None, rows: Sequence[Sequence]) -> bytes:
    """The JSON of a list page: ``count`` is the count query's value (None: not counted),
    ``rows`` the page query's rows (one more than ``top`` when there is a next page)."""
    next_cursor = None
    if len(rows) > plan.top:
        rows = rows[: plan.top]
        last = rows[-1]
        next_cursor = sign_cursor({"f": plan.fingerprint, "v": [last[7], last[0]]})
    items = [item_of(PUBLIC_COLS, r) for r in rows]
    total = -1 if plan.count_sql is None else int(count or 0)
    return orjson.dumps({"count": total, "items": items, "next_cursor": next_cursor})


# --- GET /api/cdrs/{id} -----------------------------------------------------------------------
def plan_detail(token: list, public_id: str) -> tuple[str, list]:
    """The statement and arguments of a detail request; HttpError(404) for a malformed id."""
    cdr_id = decode_id(public_id)
    if cdr_id is None:
        raise HttpError(404, "CDR not found")
    sql = DETAIL_BILLING if token[T_BILLING] else DETAIL_PUBLIC
    args: list = [cdr_id]
    domains = token[T_DOMAINS]
    if domains:
        sql += " AND " + DOMAIN_SQL
        args += [list(domains), list(domains)]
    return sql, args


def detail_body(token: list, row: Sequence | None) -> bytes:
    if row is None:
        raise HttpError(404, "CDR not found")
    if not token[T_BILLING]:
        return orjson.dumps({"items": [item_of(PUBLIC_COLS, row)]})
    item = item_of(ALL_COLS, row)
    cost = item["cost"]
    if cost is None:
        return orjson.dumps({"items": [item]})
    # orjson cannot write a Decimal as a number: write a marker, then splice the exact digits.
    item["cost"] = _COST_MARK
    return orjson.dumps({"items": [item]}).replace(_COST_JSON, format(cost, "f").encode(), 1)
