"""The admin: read-only CDR browsing that stays cheap on a large table, and API tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.admin.sites import site
from django.contrib.auth.models import Permission
from django.contrib.sessions.models import Session
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

from cdrs import fields as spine
from cdrs.ids import encode_id
from cdrs.models import ApiToken, Cdr
from cdrs.tokens import mint_token, token_digest
from tests.factories import cdr_payload, create_cdr, create_cdrs, create_generated

if TYPE_CHECKING:
    from django.test.client import _MonkeyPatchedWSGIResponse

pytestmark = pytest.mark.django_db

CDRS = "/admin/cdrs/cdr/"
TOKENS = "/admin/cdrs/apitoken/"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
_ROW_LINK = re.compile(r'href="/admin/cdrs/cdr/(\d+)/change/')
_NEW_TOKEN = re.compile(r'id="new-api-token">(cdr_[a-z0-9]{10}_[A-Za-z0-9_-]{20,})<')


def listed(response) -> list[int]:
    """CDR ids linked from a changelist page, in page order."""
    assert response.status_code == 200, response.status_code
    ids = [int(i) for i in _ROW_LINK.findall(response.content.decode())]
    return list(dict.fromkeys(ids))


def change_url(pk: int) -> str:
    return f"{CDRS}{pk}/change/"


@pytest.fixture
def staff(django_user_model):
    """``staff("view_cdr", "view_billing")``: a logged-in client for a staff user with those
    cdrs permissions only."""

    def make(*codenames: str) -> Client:
        user = django_user_model.objects.create_user(
            username="staff-" + "-".join(codenames), password="pw", is_staff=True
        )
        user.user_permissions.set(
            Permission.objects.filter(content_type__app_label="cdrs", codename__in=codenames)
        )
        client = Client()
        client.force_login(user)
        return client

    return make


@pytest.fixture
def sample() -> dict[str, int]:
    """Four CDRs that differ in every filtered and searched column."""
    ids = create_cdrs(
        cdr_payload(
            started=T0,
            caller="+442071234567",
            callee="101",
            destination="101",
            callee_display_name="Zoë Quinn",
            direction="INBOUND_CALL",
            trunk="sipgate",
            answered_at=None,
            end_reason="CANCELLED",
            duration=0,
        ),
        cdr_payload(
            started=T0 + timedelta(hours=1),
            caller="102",
            callee="+33155512345",
            destination="+33155512345",
            direction="OUTBOUND_CALL",
            trunk="telnyx-us",
            reroute_reason="OVERFLOW",
            cost=Decimal("0.1235"),
            billed_account="ACC-7",
            duration=3661,
        ),
        cdr_payload(started=T0 + timedelta(days=40), caller="103", callee="104", destination="104"),
        cdr_payload(
            started=T0 + timedelta(days=400), caller="105", callee="106", destination="106"
        ),
    )
    return dict(zip(("inbound", "outbound", "june", "next_year"), ids, strict=True))


# --- CDR changelist --------------------------------------------------------------------------


def test_changelist_lists_newest_first_with_filters_and_search_box(admin_client, sample):
    response = admin_client.get(CDRS)
    html = response.content.decode()
    assert listed(response) == [
        sample["next_year"],
        sample["june"],
        sample["outbound"],
        sample["inbound"],
    ]
    for title in ("By direction", "By end reason", "By reroute reason", "By trunk"):
        assert title in html
    assert "By answered" in html
    assert 'id="searchbar"' in html
    assert 'class="toplinks"' in html  # the date hierarchy
    assert "of 4" in html  # the unfiltered total, from the counter slots
    assert "Add CDR" not in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("direction__exact=INBOUND_CALL", ["inbound"]),
        ("direction__exact=OUTBOUND_CALL", ["outbound"]),
        ("end_reason__exact=CANCELLED", ["inbound"]),
        ("reroute_reason__exact=OVERFLOW", ["outbound"]),
        ("trunk=telnyx-us", ["outbound"]),
        ("answered=no", ["inbound"]),
        ("answered=yes", ["next_year", "june", "outbound"]),
        ("started_at__year=2024&started_at__month=5", ["outbound", "inbound"]),
        ("started_at__year=2024&started_at__month=5&started_at__day=1", ["outbound", "inbound"]),
        ("started_at__year=2025", ["next_year"]),
        ("q=102", ["outbound"]),  # exact caller
        ("q=%2B33155512345", ["outbound"]),  # exact callee
        ("q=Zo%C3%AB", ["inbound"]),  # part of a display name, any case
        ("q=zoë+quinn", ["inbound"]),
        ("q=0712345", ["inbound"]),  # part of a number (3+ characters)
        ("q=10", []),  # too short for a substring: exact matches only
        ("q=nobody", []),
        ("direction__exact=INBOUND_CALL&q=102", []),
    ],
)
def test_changelist_filters_and_search(admin_client, sample, query, expected):
    assert listed(admin_client.get(f"{CDRS}?{query}")) == [sample[k] for k in expected]


def test_search_by_call_id_and_by_public_or_internal_id(admin_client, sample):
    outbound = Cdr.objects.get(pk=sample["outbound"])
    assert listed(admin_client.get(CDRS, {"q": outbound.call_id})) == [outbound.pk]
    assert listed(admin_client.get(CDRS, {"q": encode_id(outbound.pk)})) == [outbound.pk]
    assert listed(admin_client.get(CDRS, {"q": str(outbound.pk)})) == [outbound.pk]


def _toplinks(html: str) -> str:
    return html.split('class="toplinks"')[1].split("</nav>")[0]


def test_date_hierarchy_lists_periods_between_the_first_and_last_cdr(admin_client, sample):
    top = _toplinks(admin_client.get(CDRS).content.decode())
    assert "started_at__year=2024" in top and "started_at__year=2025" in top
    assert "started_at__year=2023" not in top and "started_at__year=2026" not in top
    year = _toplinks(admin_client.get(CDRS, {"started_at__year": "2024"}).content.decode())
    assert "May 2024" in year and "December 2024" in year and "April 2024" not in year
    month = _toplinks(
        admin_client.get(
            CDRS, {"started_at__year": "2024", "started_at__month": "5"}
        ).content.decode()
    )
    assert "May 1" in month and "May 31" in month and "started_at__day=31" in month
    # Other filters stay in the links.
    filtered = admin_client.get(CDRS, {"direction__exact": "INBOUND_CALL"}).content.decode()
    assert "direction__exact=INBOUND_CALL" in _toplinks(filtered)


def test_date_hierarchy_bounds_come_from_the_unfiltered_table(admin_client, sample):
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(CDRS, {"q": "Zo", "answered": "no"})
    minmax = [q["sql"] for q in ctx.captured_queries if "MIN(" in q["sql"]]
    assert len(minmax) == 1 and "WHERE" not in minmax[0].upper()


def test_trunk_filter_offers_the_trunks_in_use(admin_client, sample):
    html = admin_client.get(CDRS).content.decode()
    assert "?trunk=sipgate" in html and "?trunk=telnyx-us" in html


def test_only_started_is_sortable(admin_client, sample):
    html = admin_client.get(CDRS).content.decode()
    assert html.count('class="sortable') == 1
    oldest_first = admin_client.get(CDRS, {"o": "0"})
    assert listed(oldest_first) == [
        sample["inbound"],
        sample["outbound"],
        sample["june"],
        sample["next_year"],
    ]
    # ?o=<index of another column> is ignored rather than sorting the whole table by it.
    assert listed(admin_client.get(CDRS, {"o": "1"})) == listed(admin_client.get(CDRS))


def test_pages_look_one_row_ahead_instead_of_counting(admin_client):
    ids = create_generated(105)
    newest_first = [c.pk for c in Cdr.objects.order_by("-started_at", "-id")]
    assert sorted(newest_first) == sorted(ids)
    first = admin_client.get(CDRS)
    assert listed(first) == newest_first[:100]
    html = first.content.decode()
    assert "CDRs 1–100 of 105" in html and 'rel="next"' in html and 'rel="prev"' not in html
    second = admin_client.get(CDRS, {"p": "2"})
    assert listed(second) == newest_first[100:]
    html = second.content.decode()
    assert "CDRs 101–105 of 105" in html and 'rel="next"' not in html and 'rel="prev"' in html
    # Filtered: no total (it would need a COUNT), but still a next link when there is more.
    filtered = admin_client.get(CDRS, {"started_at__year": "2025"}).content.decode()
    assert " of 105" not in filtered and "(more on the next page)" in filtered
    # Past the end: Django's "invalid page" redirect, never a page of nothing.
    assert admin_client.get(CDRS, {"p": "9"}).status_code == 302
    # No "Show all" (one unbounded SELECT of the whole table).
    assert (
        "Show all" not in html
        and listed(admin_client.get(CDRS, {"all": ""})) == (newest_first[:100])
    )


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?direction__exact=OUTBOUND_CALL",
        "?q=Alice",
        "?q=101",
        "?answered=no&trunk=sipgate",
        "?started_at__year=2025",
        "?started_at__year=2025&started_at__month=3",
        "?p=2",
        "?o=0",
    ],
)
def test_changelist_runs_few_queries_and_never_counts_the_table(
    admin_client, django_assert_max_num_queries, query
):
    create_generated(250)
    # session, user, the page (one look-ahead query), the total from the counter slots
    # (unfiltered only), the trunk choices and the date hierarchy's MIN/MAX: the same
    # whatever the number of rows.
    with (
        django_assert_max_num_queries(6),
        CaptureQueriesContext(connection) as ctx,
    ):
        response = admin_client.get(CDRS + query)
    assert response.status_code == 200
    on_cdrs = [q["sql"].upper() for q in ctx.captured_queries if "CDRS_CDR" in q["sql"].upper()]
    assert on_cdrs
    assert not [sql for sql in on_cdrs if "COUNT(" in sql], on_cdrs
    # Django's own date hierarchy and trunk filter run SELECT DISTINCT over every row.
    assert not [sql for sql in on_cdrs if "DISTINCT" in sql], on_cdrs
    # The page itself is bounded.
    assert all("LIMIT" in sql or "MIN(" in sql for sql in on_cdrs), on_cdrs


def test_changelist_query_count_for_plain_staff(staff, django_assert_max_num_queries):
    create_generated(150)
    client = staff("view_cdr")
    # + the user's and the groups' permissions (each read once per request).
    with django_assert_max_num_queries(8):
        assert client.get(CDRS).status_code == 200


# --- permissions -------------------------------------------------------------------------------


def test_billing_columns_only_with_the_billing_permission(admin_client, staff, sample):
    plain = staff("view_cdr")
    billing = staff("view_cdr", "view_billing")
    for client, sees in ((admin_client, True), (plain, False), (billing, True)):
        html = client.get(CDRS).content.decode()
        assert ("column-cost" in html) is sees
        assert ("column-billed_account" in html) is sees
        assert ("ACC-7" in html) is sees
        detail = client.get(change_url(sample["outbound"])).content.decode()
        assert ("Billed account" in detail) is sees
        assert ("ACC-7" in detail) is sees
        assert ("0.1235" in detail) is sees


def test_filtering_on_billing_fields_needs_the_billing_permission(admin_client, staff, sample):
    url = f"{CDRS}?cost__gte=0.1&billed_account=ACC-7"
    assert staff("view_cdr").get(url).status_code == 400
    assert listed(staff("view_cdr", "view_billing").get(url)) == [sample["outbound"]]
    assert listed(admin_client.get(url)) == [sample["outbound"]]


def test_cdrs_cannot_be_added_changed_or_deleted_even_by_a_superuser(
    admin_client, admin_user, sample
):
    pk = sample["outbound"]
    assert admin_client.get(f"{CDRS}add/").status_code == 403
    assert admin_client.post(f"{CDRS}add/", {"caller": "1"}).status_code == 403
    assert admin_client.post(change_url(pk), {"caller": "999"}).status_code == 403
    assert admin_client.get(f"{CDRS}{pk}/delete/").status_code == 403
    assert admin_client.post(f"{CDRS}{pk}/delete/", {"post": "yes"}).status_code == 403
    response = admin_client.post(
        CDRS, {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}
    )
    assert response.status_code in (200, 302)
    assert Cdr.objects.get(pk=pk).caller == "102"
    assert Cdr.objects.count() == 4
    request = RequestFactory().get(CDRS)
    request.user = admin_user
    model_admin = site._registry[Cdr]
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    assert model_admin.has_view_permission(request)
    assert model_admin.get_actions(request) == {}


def test_staff_without_view_permission_sees_no_cdrs(staff, sample):
    assert staff("view_apitoken").get(CDRS).status_code == 403


# --- CDR detail --------------------------------------------------------------------------------


def test_detail_is_human_readable(admin_client, sample):
    pk = sample["outbound"]
    response = admin_client.get(change_url(pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert "1:01:01" in html  # duration 3661 s as h:mm:ss
    assert "2024-05-01 13:00:00 UTC" in html  # local time (TIME_ZONE is UTC in tests)
    assert "UTC 2024-05-01T13:00:00Z" in html  # and UTC as the API writes it
    assert encode_id(pk) in html
    assert "OVERFLOW" in html and "+33155512345" in html
    assert 'name="_save"' not in html  # read-only: no save button, no inputs
    assert 'name="caller"' not in html and 'name="duration"' not in html


_FORM_ROW = re.compile(r'class="form-row[^"]*? field-(\w+)"')


def test_detail_shows_every_cdr_field_once_billing_only_with_the_permission(
    admin_client, staff, sample
):
    # The page's rows derive from cdrs/fields.py: a field added there shows up here.
    url = change_url(sample["outbound"])
    rows = _FORM_ROW.findall(admin_client.get(url).content.decode())
    assert len(rows) == len(set(rows)), rows
    timing = set(spine.TIMESTAMP_FIELD_NAMES) | {"duration"}
    plain = [n for n in spine.ALL_FIELD_NAMES if n not in timing]
    assert {f"{n}_shown" for n in plain} <= set(rows)
    # Timing rows one per timestamp and the duration; public id, other legs, natural key.
    assert len(rows) == len(spine.CDR_FIELDS) + 3
    rows = _FORM_ROW.findall(staff("view_cdr").get(url).content.decode())
    assert not {f"{n}_shown" for n in spine.PRIVATE_FIELD_NAMES} & set(rows)
    assert len(rows) == len(spine.CDR_FIELDS) + 3 - len(spine.PRIVATE_FIELD_NAMES)


def test_detail_shows_local_time_and_utc_side_by_side(admin_client, settings, sample):
    settings.TIME_ZONE = "Europe/Paris"
    html = admin_client.get(change_url(sample["outbound"])).content.decode()
    assert "2024-05-01 15:00:00 CEST" in html
    assert "UTC 2024-05-01T13:00:00Z" in html


def test_detail_links_other_cdrs_of_the_same_call(admin_client):
    legs = create_cdrs(
        *[
            cdr_payload(call_id="shared-call@pbx", started=T0 + timedelta(seconds=i))
            for i in range(3)
        ]
    )
    unrelated = create_cdr(call_id="other-call@pbx")
    html = admin_client.get(change_url(legs[0])).content.decode()
    section = html.split('class="cdr-same-call"')[1].split("</ul>")[0]
    assert change_url(legs[1]) in section and change_url(legs[2]) in section
    assert change_url(legs[0]) not in section
    assert change_url(unrelated) not in section
    lonely = admin_client.get(change_url(unrelated)).content.decode()
    assert 'class="cdr-same-call"' not in lonely


def test_detail_caps_the_same_call_links(admin_client):
    legs = create_cdrs(
        *[
            cdr_payload(call_id="busy-call@pbx", started=T0 + timedelta(seconds=i))
            for i in range(53)
        ]
    )
    html = admin_client.get(change_url(legs[0])).content.decode()
    section = html.split('class="cdr-same-call"')[1].split("</ul>")[0]
    assert len(_ROW_LINK.findall(section)) == 50
    assert "?call_id=busy-call%40pbx" in section
    assert len(listed(admin_client.get(CDRS, {"call_id": "busy-call@pbx"}))) == 53


# --- API tokens --------------------------------------------------------------------------------


def _add_token(client: Client, user_pk: int, **overrides: str) -> _MonkeyPatchedWSGIResponse:
    data = {
        "user": str(user_pk),
        "name": "billing export",
        "scope_read": "on",
        "scope_billing": "on",
        "domains": "Sales.Example.com, pbx.example.com  pbx.example.com;acme.test",
        "expires_at_0": "",
        "expires_at_1": "",
        "enabled": "on",
        "_save": "Save",
    }
    data.update(overrides)
    return client.post(f"{TOKENS}add/", data, follow=True)


def test_token_created_in_the_admin_shows_its_secret_once_and_stores_only_a_digest(
    admin_client, admin_user
):
    response = _add_token(admin_client, admin_user.pk)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == TOKENS
    found = _NEW_TOKEN.findall(response.content.decode())
    assert len(found) == 1
    plain = found[0]
    secret = plain.split("_", 2)[2]

    token = ApiToken.objects.get()
    assert token.user == admin_user
    assert plain == f"cdr_{token.prefix}_{secret}"
    assert token.digest == token_digest(plain)
    assert token.scopes == ["read", "billing"]
    assert token.domains == ["acme.test", "pbx.example.com", "sales.example.com"]
    # Neither the token nor its secret is in any column, the admin log or the sessions.
    for value in ApiToken.objects.values().get().values():
        assert secret not in str(value)
    for row in LogEntry.objects.values():
        assert secret not in str(row)
    for session in Session.objects.all():
        assert secret not in str(session.get_decoded())

    # It works, once only shown: the next page (a reload) no longer has it.
    api = Client(HTTP_AUTHORIZATION=f"Bearer {plain}")
    assert api.get("/api/cdrs").status_code == 200
    again = admin_client.get(TOKENS).content.decode()
    assert secret not in again and "new-api-token" not in again
    change = admin_client.get(f"{TOKENS}{token.pk}/change/").content.decode()
    assert secret not in change and token.digest not in change
    assert token.prefix in change
    assert "acme.test, pbx.example.com, sales.example.com" in change


def _input_tag(html: str, name: str) -> str:
    """The ``<input>`` named ``name`` (the page must have one)."""
    found = re.search(rf'<input[^>]*name="{name}"[^>]*>', html)
    assert found is not None, name
    return found.group(0)


def test_new_token_form_offers_read_only_by_default(admin_client):
    html = admin_client.get(f"{TOKENS}add/").content.decode()
    boxes = {
        name: _input_tag(html, name) for name in ("scope_read", "scope_billing", "scope_write")
    }
    assert "checked" in boxes["scope_read"]
    assert "checked" not in boxes["scope_billing"] and "checked" not in boxes["scope_write"]


def test_token_form_needs_a_scope_and_a_future_expiry(admin_client, admin_user):
    response = _add_token(
        admin_client, admin_user.pk, scope_read="", scope_billing="", scope_write=""
    )
    assert "A token needs at least one scope." in response.content.decode()
    response = _add_token(
        admin_client, admin_user.pk, expires_at_0="2001-01-01", expires_at_1="00:00:00"
    )
    assert "The expiry must be in the future." in response.content.decode()
    assert not ApiToken.objects.exists()
    response = _add_token(
        admin_client, admin_user.pk, expires_at_0="2999-01-01", expires_at_1="00:00:00"
    )
    assert _NEW_TOKEN.search(response.content.decode())
    assert ApiToken.objects.get().expires_at == datetime(2999, 1, 1, tzinfo=UTC)


def test_editing_a_token_keeps_its_secret(admin_client):
    minted = mint_token(username="integrator", scopes=("read",))
    token = minted.token
    response = admin_client.post(
        f"{TOKENS}{token.pk}/change/",
        {
            "name": "renamed",
            "scope_read": "on",
            "scope_write": "on",
            "domains": "",
            "expires_at_0": "",
            "expires_at_1": "",
            "enabled": "on",
            "_save": "Save",
        },
        follow=True,
    )
    assert response.status_code == 200
    assert not _NEW_TOKEN.search(response.content.decode())
    token.refresh_from_db()
    assert (token.name, token.scopes, token.domains) == ("renamed", ["read", "write"], [])
    assert token.digest == token_digest(minted.plain)
    assert token.user.username == "integrator"


def test_token_list_shows_prefix_scopes_domains_but_never_the_digest(admin_client):
    minted = mint_token(
        username="integrator", scopes=("read", "write"), domains=("acme.test",), name="pbx feed"
    )
    token = minted.token
    html = admin_client.get(TOKENS).content.decode()
    for text in (token.prefix, "integrator", "read, write", "acme.test", "pbx feed", "active"):
        assert text in html
    assert token.digest not in html
    assert admin_client.get(f"{TOKENS}?digest__startswith={token.digest[:2]}").status_code == 400
    assert token.prefix in admin_client.get(TOKENS, {"q": token.prefix}).content.decode()


def test_revoke_action_disables_the_selected_tokens(admin_client):
    one = mint_token(username="a")
    two = mint_token(username="b")
    kept = mint_token(username="c")
    response = admin_client.post(
        TOKENS,
        {"action": "revoke_tokens", "_selected_action": [one.token.pk, two.token.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "Revoked 2 token(s)." in response.content.decode()
    enabled = dict(ApiToken.objects.values_list("pk", "enabled"))
    assert enabled == {one.token.pk: False, two.token.pk: False, kept.token.pk: True}
    assert Client(HTTP_AUTHORIZATION=f"Bearer {one.plain}").get("/api/cdrs").status_code == 401
    assert Client(HTTP_AUTHORIZATION=f"Bearer {kept.plain}").get("/api/cdrs").status_code == 200
    assert LogEntry.objects.filter(object_id=str(one.token.pk)).exists()
    html = admin_client.get(TOKENS).content.decode()
    assert "revoked" in html


def test_token_list_runs_a_bounded_number_of_queries(admin_client, django_assert_max_num_queries):
    for n in range(30):
        mint_token(username=f"user{n}")
    with django_assert_max_num_queries(8):
        assert admin_client.get(TOKENS).status_code == 200


# --- naming, labels, empty values, domain filters -----------------------------------------------


def test_site_is_named_and_view_site_opens_the_api_docs(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert "cdrservice administration" in html and "Django administration" not in html
    assert 'href="/api/docs"' in html  # "View site"


def test_detail_has_human_labels_and_one_empty_marker(admin_client):
    # No reroute, no trunk, no DID, no other legs, never answered, not rated.
    [pk] = create_cdrs(cdr_payload(reroute_reason="", trunk="", did_cid="", answered_at=None))
    html = admin_client.get(change_url(pk)).content.decode()
    for label in ("DID/CID", "Call-ID", "Outbound caller ID"):
        assert f">{label}:<" in html, label
    for wrong in ("Did cid", "Call id", "(none)", ">None<", ">-<"):
        assert wrong not in html, wrong
    content = html.split('id="content-main"')[1]
    assert content.count(">—<") >= 5  # trunk, DID/CID, reroute, answered, other CDRs, ...


def test_changelist_shows_the_empty_marker_for_missing_values(admin_client):
    create_cdrs(cdr_payload(trunk="", cost=None, billed_account=""))
    html = admin_client.get(CDRS).content.decode()
    row = html.split('id="result_list"')[1].split("</tbody>")[0]
    assert 'class="field-trunk_shown">—<' in row
    assert 'class="field-cost">—<' in row and 'class="field-billed_account_shown">—<' in row


@pytest.fixture
def domains() -> dict[str, int]:
    ids = create_cdrs(
        cdr_payload(caller_domain="Acme.Test", callee_domain="pbx.example.com"),
        cdr_payload(caller_domain="pbx.example.com", callee_domain="acme.test"),
        cdr_payload(caller_domain="other.example.org", callee_domain="other.example.org"),
    )
    return dict(zip(("from_acme", "to_acme", "other"), ids, strict=True))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("caller_domain=acme.test", ["from_acme"]),  # any case
        ("caller_domain=ACME.TEST", ["from_acme"]),
        ("callee_domain=acme.test", ["to_acme"]),
        ("callee_domain=other.example.org&caller_domain=other.example.org", ["other"]),
        ("caller_domain=nowhere.test", []),
    ],
)
def test_domain_filters(admin_client, domains, query, expected):
    ids = listed(admin_client.get(f"{CDRS}?{query}"))
    assert sorted(ids) == sorted(domains[k] for k in expected)


def test_domain_filters_offer_recent_domains_and_a_box_that_keeps_other_filters(
    admin_client, domains
):
    html = admin_client.get(CDRS, {"direction__exact": "EXTENSION_CALL", "q": "10"}).content
    page = html.decode()
    assert "By caller domain" in page and "By callee domain" in page
    assert "?caller_domain=acme.test" in page and "?callee_domain=other.example.org" in page
    box = page.split('id="filter-caller_domain"')[0].rsplit("<form", 1)[1]
    assert 'name="direction__exact" value="EXTENSION_CALL"' in box
    assert 'name="q" value="10"' in box


def test_domain_filter_is_index_served_not_distinct_over_the_table(admin_client, domains):
    with CaptureQueriesContext(connection) as ctx:
        admin_client.get(CDRS, {"caller_domain": "acme.test"})
    on_cdrs = [q["sql"].upper() for q in ctx.captured_queries if "CDRS_CDR" in q["sql"].upper()]
    assert not [sql for sql in on_cdrs if "DISTINCT" in sql or "COUNT(" in sql], on_cdrs
    page = [sql for sql in on_cdrs if "LOWER(" in sql]
    assert page and all("LIMIT" in sql for sql in page), on_cdrs
