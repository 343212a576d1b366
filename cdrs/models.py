"""CDRs and the API tokens that read and write them."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

from cdrs import fields as spine


def _choices(values: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(v, v or "(none)") for v in values]


def _string(name: str) -> models.CharField:
    limit = spine.FIELDS_BY_NAME[name].max_length
    assert limit is not None
    return models.CharField(max_length=limit, default="", blank=True)


class Cdr(models.Model):
    """One call detail record, as written by the PBX (one row per call leg).

    The primary key is the 64-bit integer behind the public base64 id (see ``cdrs.ids``).
    Strings are ``""`` when unknown, never NULL. Every limit and enum of the contract is a
    database constraint, so no write path (API, import, admin, raw SQL) can store a CDR the
    API could not have accepted.

    On PostgreSQL the table is range-partitioned by month on ``started_at`` (``cdrs.partitions``,
    migrations 0008 and 0011: months, and spill partitions over every other range), and a
    unique index of a partitioned table must contain the partition key. Both
    de-duplication guarantees hold all the same:

    - Same natural key, one row: ``UNIQUE (natural_key, started_at)`` is as strong as
      ``UNIQUE (natural_key)``, because the key is a hash over started_at (among others):
      two rows with one key have one started_at (short of a 128-bit hash collision).
    - Same id, one row: the database's primary key is ``(id, started_at)``, which alone would
      let one id live under two started_at values (two partitions). ``cdrs_cdr_id`` is a
      plain table with ``id`` as its primary key and one row per CDR, written by statement
      triggers on ``cdrs_cdr`` in the same statement as the CDRs: an id stored under
      another started_at fails there, across partitions and concurrent writers alike. Ids
      we generate carry their time (snowflakes), but ids a PBX sends do not (PortSIP's are
      its own), so a rule on the id's bits could not cover them; the registry covers both.
      Django keeps ``id`` as the model's primary key (the ORM is unchanged: an id names
      one row); see ``cdrs.partitions`` for the work that bypasses the triggers.
    """

    id = models.BigIntegerField(primary_key=True)
    caller = _string("caller")
    caller_domain = _string("caller_domain")
    caller_display_name = _string("caller_display_name")
    callee = _string("callee")
    callee_domain = _string("callee_domain")
    callee_display_name = _string("callee_display_name")
    started_at = models.DateTimeField()
    rang_at = models.DateTimeField(null=True, blank=True)
    answered_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField()
    call_id = _string("call_id")
    direction = models.CharField(max_length=32, choices=_choices(spine.DIRECTIONS))
    end_reason = models.CharField(max_length=32, choices=_choices(spine.END_REASONS))
    reroute_reason = models.CharField(
        max_length=32, choices=_choices(spine.REROUTE_REASONS), default="", blank=True
    )
    status_code = models.IntegerField(default=0)
    destination = _string("destination")
    outbound_caller_id = _string("outbound_caller_id")
    did_cid = _string("did_cid")
    trunk = _string("trunk")
    duration = models.IntegerField(default=0)
    cost = models.DecimalField(
        max_digits=spine.COST_MAX_DIGITS,
        decimal_places=spine.COST_DECIMAL_PLACES,
        null=True,
        blank=True,
    )
    billed_account = _string("billed_account")
    service_number = _string("service_number")
    user_data = _string("user_data")
    # 16-byte hash of (call_id, started_at, caller, callee): the natural key that recognises a
    # re-sent CDR without an id. A hash, because a B-tree entry over the raw columns (up to
    # ~6 KB of UTF-8) could exceed PostgreSQL's index row limit and fail the insert.
    natural_key = models.UUIDField(editable=False)

    class Meta:
        db_table = "cdrs_cdr"
        verbose_name = "CDR"
        verbose_name_plural = "CDRs"
        permissions = [("view_billing", "Can see cost and billed account of CDRs")]
        indexes = [
            # GET /api/cdrs default order: ORDER BY started_at DESC, id DESC LIMIT n, and the
            # started_after/started_before window and started_at keyset cursors.
            models.Index(fields=["-started_at", "-id"], name="cdr_started_id_idx"),
            # filter caller eq '101' / ?caller=101, newest first.
            models.Index(fields=["caller", "-started_at", "-id"], name="cdr_caller_started_idx"),
            # filter callee eq '102' / ?callee=102, newest first.
            models.Index(fields=["callee", "-started_at", "-id"], name="cdr_callee_started_idx"),
            # ?call_id=... and the admin's "other legs of this call" link.
            models.Index(fields=["call_id"], name="cdr_call_id_idx"),
            # Domain-limited tokens: WHERE lower(caller_domain) IN (...) OR
            # lower(callee_domain) IN (...), as a BitmapOr of these two.
            models.Index(Lower("caller_domain"), name="cdr_caller_domain_lower_idx"),
            models.Index(Lower("callee_domain"), name="cdr_callee_domain_lower_idx"),
        ]
        constraints = [
            # Re-sent CDRs without an id (see natural_key). started_at is in the key because a
            # partitioned table's unique index must hold the partition key; it changes nothing
            # (the hash covers started_at).
            models.UniqueConstraint(
                fields=["natural_key", "started_at"], name="cdr_natural_key_uniq"
            ),
            models.CheckConstraint(
                condition=Q(direction__in=spine.DIRECTIONS), name="cdr_direction_valid"
            ),
            models.CheckConstraint(
                condition=Q(end_reason__in=spine.END_REASONS), name="cdr_end_reason_valid"
            ),
            models.CheckConstraint(
                condition=Q(reroute_reason__in=spine.REROUTE_REASONS),
                name="cdr_reroute_reason_valid",
            ),
            models.CheckConstraint(
                condition=Q(status_code__gte=0, status_code__lte=spine.STATUS_CODE_MAX),
                name="cdr_status_code_range",
            ),
            models.CheckConstraint(condition=Q(duration__gte=0), name="cdr_duration_nonneg"),
            models.CheckConstraint(condition=Q(id__gte=1), name="cdr_id_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.caller} → {self.callee} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class CdrNaturalKey(models.Model):
    """On Citus only: the natural key of every stored CDR, kept unique by its primary key.

    Citus distributes ``cdrs_cdr`` by ``id`` (detail by id then reads one shard), and a
    unique constraint on a distributed table must contain its distribution column, so
    ``cdr_natural_key_uniq`` cannot stay there. This table, distributed by ``natural_key``,
    is the constraint instead: ``cdrs.services`` claims a CDR's key here (``INSERT ... ON
    CONFLICT DO NOTHING``) in the transaction that stores the CDR, so two concurrent senders
    of one call still store it once. ``started_at`` lets retention drop the keys of the CDRs
    it removes. Empty and unused on SQLite and plain PostgreSQL, where the constraint on
    ``cdrs_cdr`` does the job (``cdrs.citus``, migration 0010_citus).
    """

    natural_key = models.UUIDField(primary_key=True)
    cdr_id = models.BigIntegerField()
    started_at = models.DateTimeField()

    class Meta:
        db_table = "cdrs_cdr_natural_key"

    def __str__(self) -> str:
        return f"{self.natural_key} -> {self.cdr_id}"


class CdrCounter(models.Model):
    """Exact number of stored CDRs, kept in slots updated by every write path.

    Serves the unfiltered ``count`` of GET /api/cdrs without a COUNT(*) over the whole
    table. Writers add to one slot chosen at random in the same transaction as their
    inserts, so concurrent writers rarely wait on each other; the count is ``SUM(rows)``.
    """

    slot = models.SmallIntegerField(primary_key=True)
    rows = models.BigIntegerField(default=0)

    class Meta:
        db_table = "cdrs_counter"

    def __str__(self) -> str:
        return f"slot {self.slot}: {self.rows}"


class ApiToken(models.Model):
    """A Bearer token: scopes, optional SIP-domain limit and expiry; only a hash is stored.

    The token a client sends is ``cdr_<prefix>_<secret>``. ``prefix`` is public and finds the
    row; ``digest`` is HMAC-SHA256 of the whole token keyed with the server pepper, compared
    in constant time. The plain token is shown once, when it is created.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    digest = models.CharField(max_length=64, editable=False)
    scope_read = models.BooleanField("read scope", default=True)
    scope_billing = models.BooleanField("billing scope", default=True)
    scope_write = models.BooleanField("write scope", default=False)
    # Lower-case SIP domains; empty list = every domain.
    domains = models.JSONField(default=list, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        db_table = "cdrs_api_token"
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.prefix} ({self.user})"

    @property
    def scopes(self) -> list[str]:
        names = [("read", self.scope_read), ("billing", self.scope_billing)]
        names.append(("write", self.scope_write))
        return [name for name, on in names if on]


class PortsipDeadLetter(models.Model):
    """A PortSIP webhook event that could not be stored as a CDR, kept whole for a replay.

    The PBX got a 200 for it (a retry would fail the same way), so this row is the only copy:
    ``manage.py replay_portsip_events`` maps it again after a fix. ``token_domains`` is the
    sender's domain limit when the event arrived; a replay applies it, so a tenant cannot
    reach another tenant's domains through the dead-letter table.
    """

    received_at = models.DateTimeField(auto_now_add=True, db_index=True)
    token_prefix = models.CharField(max_length=16, blank=True, default="")
    token_domains = models.JSONField(default=list, blank=True)
    # "" when the body had no usable event_type (or was not an object).
    event_type = models.CharField(max_length=64, blank=True, default="")
    # The request body exactly as received (a JSON text: it parsed, so it is valid UTF-8).
    body = models.TextField()
    # The latest failure in the contract's error-entry shape: {"code", "message", "detail"}.
    error = models.JSONField(default=dict)
    replay_attempts = models.IntegerField(default=0)
    replayed_at = models.DateTimeField(null=True, blank=True)
    # {"created", "duplicates", "ids"} of the replay that stored it.
    replay_result = models.JSONField(null=True, blank=True)

    class Meta:
        db_table = "cdrs_portsip_dead_letter"
        verbose_name = "PortSIP dead letter"
        ordering = ("-received_at", "-id")

    def __str__(self) -> str:
        return f"#{self.pk} {self.event_type or '(no event_type)'} from {self.token_prefix}"


class HourlyMeasures(models.Model):
    """The figures both statistics rollups keep per UTC hour and slot (abstract, no table).

    ``cdrs.rollup.MEASURES`` names them in this order; ``slot`` spreads concurrent writers
    of one key over a few rows, which readers sum.
    """

    hour = models.BigIntegerField()  # floor(epoch seconds of started_at / 3600), UTC
    slot = models.SmallIntegerField(default=0)
    calls = models.BigIntegerField(default=0)
    answered = models.BigIntegerField(default=0)
    total_duration = models.BigIntegerField(default=0)
    pdd_sum = models.BigIntegerField(default=0)  # seconds, over calls with rang_at and answered_at
    pdd_calls = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)  # sum of cost in millionths: exact anywhere

    class Meta:
        abstract = True


class CdrHourlyStats(HourlyMeasures):
    """Call statistics per UTC hour and dimension, kept exact by every write path.

    Serves GET /api/cdrs/stats without scanning CDRs when a request only filters and groups
    on these dimensions over whole hours (see ``cdrs.stats``). ``cdr_ingest`` adds its
    inserted rows here in the same transaction (``cdrs.rollup.add_inserted``), into one of a
    few ``slot`` rows per key chosen at random, so concurrent writers rarely wait on each
    other; readers sum over slots. ``dims_key`` is a hash of the five strings: a unique
    B-tree entry over up to three 1024-character columns could exceed PostgreSQL's limit.
    """

    dims_key = models.UUIDField()
    direction = models.CharField(max_length=32)
    end_reason = models.CharField(max_length=32)
    trunk = _string("trunk")
    caller_domain = _string("caller_domain")
    callee_domain = _string("callee_domain")

    class Meta:
        db_table = "cdrs_hourly_stats"
        constraints = [
            models.UniqueConstraint(
                fields=["hour", "dims_key", "slot"], name="cdr_hourly_stats_key_uniq"
            )
        ]

    def __str__(self) -> str:
        return f"hour {self.hour} {self.direction} {self.trunk}: {self.calls} calls"


class CdrHourlyTotals(HourlyMeasures):
    """``CdrHourlyStats`` summed over its dimensions: one row per UTC hour and slot.

    Answers the most common statistics request (every CDR, per day or hour, no dimension) by
    reading ~744 rows for a month instead of the ~170,000 per-dimension rows of a month at
    10M CDRs a year. Written beside ``CdrHourlyStats`` by ``cdrs.rollup.add_inserted``.
    """

    class Meta:
        db_table = "cdrs_hourly_totals"
        constraints = [
            models.UniqueConstraint(fields=["hour", "slot"], name="cdr_hourly_totals_key_uniq")
        ]

    def __str__(self) -> str:
        return f"hour {self.hour}: {self.calls} calls"


class RateCounter(models.Model):
    """One rate limit counter: requests of a token, or rejected tokens from an address, in
    one fixed window (``cdrs.throttling``), when no REDIS_URL is set.

    Not Django's database cache: its ``incr`` is a read and a write in a transaction (five
    statements per counted request, and two workers may lose a hit), where one
    ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` counts exactly in one round trip.
    Unlogged on PostgreSQL: counters need no crash safety. The window is part of ``key``, so
    a key is never reused; rows past ``expires_at`` (Unix seconds) are deleted when a new
    window starts.
    """

    key = models.CharField(max_length=255, primary_key=True)
    count = models.IntegerField()
    expires_at = models.BigIntegerField()

    class Meta:
        db_table = "cdrs_rate_counter"
        constraints = [
            models.CheckConstraint(condition=Q(count__gte=1), name="rate_counter_count_positive")
        ]

    def __str__(self) -> str:
        return f"{self.key}: {self.count}"
