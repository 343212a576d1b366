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
drop_secondary_indexes
echo "$(date +%T) insert 10,000,000 CDRs over $MONTHS months"
# Half the ids are snowflakes (cdrs/ids.py: ms since 2000 << 22 | low bits), half a PBX's.
start="(timestamptz '2026-01-01 00:00:00+00' - make_interval(months => $MONTHS))"
insert_synthetic_cdrs 10000000 \
  "CASE WHEN g % 2 = 0 THEN ((floor(extract(epoch FROM t) * 1000)::bigint - 946684800000) << 22) | (g & 4194303) ELSE g END" \
  "date_trunc('second', $start + (g * extract(epoch FROM (timestamptz '2026-01-01 00:00:00+00' - $start)) / 10000001.0) * interval '1 second')"
rebuild_indexes
recount_and_analyze
echo "$(date +%T) done: $($P -d "$DB" -At -c 'SELECT count(*) FROM cdrs_cdr') CDRs"
