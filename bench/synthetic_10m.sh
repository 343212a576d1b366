#!/usr/bin/env bash
# A 10,000,000-CDR PostgreSQL database for the statistics benchmark (S8), in minutes instead
# of the hour import_cdrs takes at ~5,000 rows/s: CDRs generated in SQL (one year, 2025,
# 50 tenants, 20 trunks, 70% answered), loaded with the secondary indexes dropped, the
# indexes rebuilt (all but the trigram search index, which S8 does not use), the row counter
# and both statistics rollups recomputed, then VACUUM ANALYZE. Loopback only.
#   bench/synthetic_10m.sh [DBNAME]     (default cdrbench_s8_10m; measured: ~4.5 min)
# then: .venv/bin/python bench/run.py --only S8 --skip-load --rows 10000000 \
#         --database-url postgres://postgres@127.0.0.1:5432/cdrbench_s8_10m
set -euo pipefail
DB=${1:-cdrbench_s8_10m}
source "$(dirname "$0")/synthetic_common.sh"
fresh_database
echo "$(date +%T) migrate"
DATABASE_URL=$URL .venv/bin/python manage.py migrate -v0
keep="'cdrs_cdr_pkey','cdr_natural_key_uniq'"
defs=$($P -d "$DB" -At -c "SELECT indexdef FROM pg_indexes WHERE tablename='cdrs_cdr' \
  AND indexname NOT IN ($keep,'cdr_search_trgm_idx')")
for i in $($P -d "$DB" -At -c "SELECT indexname FROM pg_indexes WHERE tablename='cdrs_cdr' \
  AND indexname NOT IN ($keep)"); do
  $P -d "$DB" -c "DROP INDEX $i"
done
echo "$(date +%T) insert 10,000,000 CDRs (whole seconds, as every write path stores them)"
$P -d "$DB" <<'SQL'
SET synchronous_commit = off;
INSERT INTO cdrs_cdr (id, caller, caller_domain, caller_display_name, callee, callee_domain,
  callee_display_name, started_at, rang_at, answered_at, ended_at, call_id, direction, end_reason,
  reroute_reason, status_code, destination, outbound_caller_id, did_cid, trunk, duration, cost,
  billed_account, service_number, user_data, natural_key)
SELECT g,
  (100 + g % 900)::text, 'tenant' || (g % 50) || '.example.com', 'User ' || (g % 900),
  (200 + (g * 7) % 9000)::text, 'tenant' || ((g * 3) % 50) || '.example.com', '',
  t, t + interval '1 second', CASE WHEN g % 10 < 7 THEN t + ((g % 20) + 2) * interval '1 second' END,
  t + ((g % 20) + 2 + (g % 600)) * interval '1 second',
  'call-' || g, (ARRAY['INBOUND_CALL','OUTBOUND_CALL','EXTENSION_CALL','INBOUND_OUTBOUND_CALL'])[1 + g % 4],
  (ARRAY['CALLER_DISCONNECTED','CALLEE_DISCONNECTED','CANCELLED','REDIRECTED'])[1 + (g / 7) % 4],
  '', CASE WHEN g % 10 < 7 THEN 200 ELSE 486 END, '', '', '', 'trunk-' || (g % 20),
  CASE WHEN g % 10 < 7 THEN g % 600 ELSE 0 END, ((g % 1000) / 1000.0)::numeric(15,6),
  'acct-' || (g % 100), '', '', md5(g::text)::uuid
FROM (SELECT g, date_trunc('second', timestamptz '2025-01-01 00:00:00+00'
                 + (g * 3.1536) * interval '1 second') AS t
      FROM generate_series(1, 10000000) g) s;
SQL
echo "$(date +%T) indexes"
while read -r def; do [ -n "$def" ] && $P -d "$DB" -c "$def"; done <<< "$defs"
recount_and_analyze
echo "$(date +%T) done: $($P -d "$DB" -At -c 'SELECT count(*) FROM cdrs_cdr') CDRs"
