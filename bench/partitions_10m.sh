#!/usr/bin/env bash
# The 10M-CDR database of the partitions benchmark (docs/scaling.md "Partitions"): CDRs made in
# SQL as bench/synthetic_10m.sh does, spread over MONTHS months (default 36) ending
# 2026-01-01, half with snowflake ids (ids the service generates: they carry their time) and
# half with small integer ids (ids a PBX sends), into the PLAIN table (migrations up to
# 0007), its indexes built after the load (all but the trigram search index), the counter
# and both rollups recomputed, VACUUM ANALYZE. Then:
#   .venv/bin/python bench/partitions.py --database-url postgres://.../DB   (before)
#   DATABASE_URL=postgres://.../DB .venv/bin/python manage.py migrate cdrs 0008  (timed)
#   .venv/bin/python bench/partitions.py --database-url postgres://.../DB   (after)
#   bench/partitions_10m.sh [DBNAME] [MONTHS]     (default cdrbench_part, 36)
set -euo pipefail
DB=${1:-cdrbench_part}
MONTHS=${2:-36}
source "$(dirname "$0")/synthetic_common.sh"
fresh_database
echo "$(date +%T) migrate cdrs 0007 (the plain table)"
DATABASE_URL=$URL .venv/bin/python manage.py migrate -v0
DATABASE_URL=$URL .venv/bin/python manage.py migrate cdrs 0007 -v0
keep="'cdrs_cdr_pkey','cdr_natural_key_uniq'"
defs=$($P -d "$DB" -At -c "SELECT indexdef FROM pg_indexes WHERE tablename='cdrs_cdr' \
  AND indexname NOT IN ($keep,'cdr_search_trgm_idx')")
for i in $($P -d "$DB" -At -c "SELECT indexname FROM pg_indexes WHERE tablename='cdrs_cdr' \
  AND indexname NOT IN ($keep)"); do
  $P -d "$DB" -c "DROP INDEX $i"
done
echo "$(date +%T) insert 10,000,000 CDRs over $MONTHS months"
$P -d "$DB" -v months="$MONTHS" <<'SQL'
SET synchronous_commit = off;
INSERT INTO cdrs_cdr (id, caller, caller_domain, caller_display_name, callee, callee_domain,
  callee_display_name, started_at, rang_at, answered_at, ended_at, call_id, direction, end_reason,
  reroute_reason, status_code, destination, outbound_caller_id, did_cid, trunk, duration, cost,
  billed_account, service_number, user_data, natural_key)
SELECT CASE WHEN g % 2 = 0
         THEN ((floor(extract(epoch FROM t) * 1000)::bigint - 946684800000) << 22) | (g & 4194303)
         ELSE g END,
  (100 + g % 900)::text, 'tenant' || (g % 50) || '.example.com', 'User ' || (g % 900),
  (200 + (g * 7) % 9000)::text, 'tenant' || ((g * 3) % 50) || '.example.com', '',
  t, t + interval '1 second', CASE WHEN g % 10 < 7 THEN t + ((g % 20) + 2) * interval '1 second' END,
  t + ((g % 20) + 2 + (g % 600)) * interval '1 second',
  'call-' || g, (ARRAY['INBOUND_CALL','OUTBOUND_CALL','EXTENSION_CALL','INBOUND_OUTBOUND_CALL'])[1 + g % 4],
  (ARRAY['CALLER_DISCONNECTED','CALLEE_DISCONNECTED','CANCELLED','REDIRECTED'])[1 + (g / 7) % 4],
  '', CASE WHEN g % 10 < 7 THEN 200 ELSE 486 END, '', '', '', 'trunk-' || (g % 20),
  CASE WHEN g % 10 < 7 THEN g % 600 ELSE 0 END, ((g % 1000) / 1000.0)::numeric(15,6),
  'acct-' || (g % 100), '', '', md5(g::text)::uuid
FROM (SELECT g, date_trunc('second', timestamptz '2026-01-01 00:00:00+00'
                 - make_interval(months => :months)
                 + (g * extract(epoch FROM (timestamptz '2026-01-01 00:00:00+00'
                     - (timestamptz '2026-01-01 00:00:00+00' - make_interval(months => :months))))
                    / 10000001.0) * interval '1 second') AS t
      FROM generate_series(1, 10000000) g) s;
SQL
echo "$(date +%T) indexes"
while read -r def; do [ -n "$def" ] && $P -d "$DB" -c "$def"; done <<< "$defs"
recount_and_analyze
echo "$(date +%T) done: $($P -d "$DB" -At -c 'SELECT count(*) FROM cdrs_cdr') CDRs"
