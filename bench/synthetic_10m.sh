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
drop_secondary_indexes
echo "$(date +%T) insert 10,000,000 CDRs (whole seconds, as every write path stores them)"
insert_synthetic_cdrs 10000000 g \
  "date_trunc('second', timestamptz '2025-01-01 00:00:00+00' + (g * 3.1536) * interval '1 second')"
rebuild_indexes
recount_and_analyze
echo "$(date +%T) done: $($P -d "$DB" -At -c 'SELECT count(*) FROM cdrs_cdr') CDRs"
