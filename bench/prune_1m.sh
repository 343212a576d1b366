#!/usr/bin/env bash
# Retention benchmark (docs/scaling.md "Retention"): one month of 1,000,000 CDRs (January
# 2024, made in SQL as bench/synthetic_10m.sh does) beside a month of 100,000 (February), in a
# fresh partitioned database, counter and rollups recomputed; then
# `manage.py prune_cdrs --before 2024-02-01`, timed, and a check that the counter, the
# registry and the rollups still match the rows left.
#   bench/prune_1m.sh [DBNAME]     (default cdrbench_part_prune)
set -euo pipefail
DB=${1:-cdrbench_part_prune}
source "$(dirname "$0")/synthetic_common.sh"
fresh_database
DATABASE_URL=$URL .venv/bin/python manage.py migrate -v0
DATABASE_URL=$URL .venv/bin/python manage.py shell -v0 -c "from datetime import date
from cdrs import partitions
partitions.ensure(first=date(2024, 1, 1), today=date(2024, 2, 1), ahead=0)"
echo "$(date +%T) insert 1,100,000 CDRs"
$P -d "$DB" <<'SQL'
SET synchronous_commit = off;
INSERT INTO cdrs_cdr (id, caller, caller_domain, caller_display_name, callee, callee_domain,
  callee_display_name, started_at, rang_at, answered_at, ended_at, call_id, direction, end_reason,
  reroute_reason, status_code, destination, outbound_caller_id, did_cid, trunk, duration, cost,
  billed_account, service_number, user_data, natural_key)
SELECT g, (100 + g % 900)::text, 'tenant' || (g % 50) || '.example.com', 'User ' || (g % 900),
  (200 + (g * 7) % 9000)::text, 'tenant' || ((g * 3) % 50) || '.example.com', '',
  t, t + interval '1 second', CASE WHEN g % 10 < 7 THEN t + interval '5 seconds' END,
  t + ((g % 600) + 7) * interval '1 second', 'call-' || g,
  (ARRAY['INBOUND_CALL','OUTBOUND_CALL','EXTENSION_CALL','INBOUND_OUTBOUND_CALL'])[1 + g % 4],
  'CALLER_DISCONNECTED', '', 200, '', '', '', 'trunk-' || (g % 20), g % 600,
  ((g % 1000) / 1000.0)::numeric(15,6), '', '', '', md5(g::text)::uuid
FROM (SELECT g, CASE WHEN g <= 1000000
                THEN date_trunc('second', timestamptz '2024-01-01 00:00:00+00' + g * interval '2.678 seconds')
                ELSE date_trunc('second', timestamptz '2024-02-01 00:00:00+00' + (g - 1000000) * interval '25 seconds')
                END AS t
      FROM generate_series(1, 1100000) g) s;
SQL
recount_and_analyze
echo "$(date +%T) prune (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
DATABASE_URL=$URL /usr/bin/time -f "prune_cdrs wall %e s" .venv/bin/python manage.py prune_cdrs --before 2024-02-01
$P -d "$DB" -At -c "SELECT 'rows ' || (SELECT count(*) FROM cdrs_cdr) || ', counter ' || \
  (SELECT sum(rows) FROM cdrs_counter) || ', registry ' || (SELECT count(*) FROM cdrs_cdr_id) || \
  ', rollup calls ' || (SELECT sum(calls) FROM cdrs_hourly_totals)"
