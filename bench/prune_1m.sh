#!/usr/bin/env bash
# Retention benchmark (docs/scaling.md "Retention"): one month of 1,000,000 CDRs (January
# 2024, made in SQL by bench/synthetic_common.sh, as for bench/synthetic_10m.sh) beside a
# month of 100,000 (February), in a fresh partitioned database, counter and rollups
# recomputed (the figures in the README came from an earlier copy of the generator whose
# rows all had one end_reason and status code; the rows per month are the same); then
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
insert_synthetic_cdrs 1100000 g "CASE WHEN g <= 1000000
  THEN date_trunc('second', timestamptz '2024-01-01 00:00:00+00' + g * interval '2.678 seconds')
  ELSE date_trunc('second', timestamptz '2024-02-01 00:00:00+00' + (g - 1000000) * interval '25 seconds')
  END"
recount_and_analyze
echo "$(date +%T) prune (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
DATABASE_URL=$URL /usr/bin/time -f "prune_cdrs wall %e s" .venv/bin/python manage.py prune_cdrs --before 2024-02-01
$P -d "$DB" -At -c "SELECT 'rows ' || (SELECT count(*) FROM cdrs_cdr) || ', counter ' || \
  (SELECT sum(rows) FROM cdrs_counter) || ', registry ' || (SELECT count(*) FROM cdrs_cdr_id) || \
  ', rollup calls ' || (SELECT sum(calls) FROM cdrs_hourly_totals)"
