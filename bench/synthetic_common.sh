# Sourced by the SQL-generated benchmark databases (synthetic_10m.sh, partitions_10m.sh,
# prune_1m.sh) after they set DB: the connection, a fresh database, the secondary indexes
# dropped and rebuilt around one INSERT of CDRs generated in SQL, and the steps after such an
# INSERT, which bypassed the service (row counter, both rollups, VACUUM ANALYZE).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export SECRET_KEY=${SECRET_KEY:-bench-only-secret-key-not-for-production-0123456789}
URL=postgres://postgres@127.0.0.1:5432/$DB
P="psql -h 127.0.0.1 -U postgres -v ON_ERROR_STOP=1 -q"

fresh_database() {
  $P -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
  $P -c "CREATE DATABASE $DB"
}

# The counter and the rollups from the rows as they are, then VACUUM ANALYZE.
recount_and_analyze() {
  echo "$(date +%T) counter and rollups"
  $P -d "$DB" -c "DELETE FROM cdrs_counter; INSERT INTO cdrs_counter (slot, rows) SELECT 0, count(*) FROM cdrs_cdr"
  DATABASE_URL=$URL .venv/bin/python manage.py shell -v0 -c "from cdrs import rollup
from django.db import transaction
with transaction.atomic(): rollup.rebuild()"
  echo "$(date +%T) vacuum analyze"
  $P -d "$DB" -c "VACUUM ANALYZE"
}

# Drop every secondary index of cdrs_cdr before a bulk INSERT (the keys stay: they are the
# de-duplication); keeps the definitions of all but the trigram search index, which the
# benchmarks do not use, in INDEX_DEFS for rebuild_indexes.
drop_secondary_indexes() {
  local keep="'cdrs_cdr_pkey','cdr_natural_key_uniq'"
  INDEX_DEFS=$($P -d "$DB" -At -c "SELECT indexdef FROM pg_indexes WHERE tablename='cdrs_cdr' \
    AND indexname NOT IN ($keep,'cdr_search_trgm_idx')")
  for i in $($P -d "$DB" -At -c "SELECT indexname FROM pg_indexes WHERE tablename='cdrs_cdr' \
    AND indexname NOT IN ($keep)"); do
    $P -d "$DB" -c "DROP INDEX $i"
  done
}

rebuild_indexes() {
  echo "$(date +%T) indexes"
  while read -r def; do [ -n "$def" ] && $P -d "$DB" -c "$def"; done <<< "$INDEX_DEFS"
}

# The INSERT of ROWS synthetic CDRs (g = 1..ROWS; 50 tenants, 20 trunks, 70% answered).
# ID_SQL and TIME_SQL are SQL expressions of g: the id (it may use t) and started_at (whole
# seconds, as every write path stores them).
synthetic_insert_sql() {
  local rows=$1 id_sql=$2 time_sql=$3
  cat <<SQL
SET synchronous_commit = off;
INSERT INTO cdrs_cdr (id, caller, caller_domain, caller_display_name, callee, callee_domain,
  callee_display_name, started_at, rang_at, answered_at, ended_at, call_id, direction, end_reason,
  reroute_reason, status_code, destination, outbound_caller_id, did_cid, trunk, duration, cost,
  billed_account, service_number, user_data, natural_key)
SELECT $id_sql,
  (100 + g % 900)::text, 'tenant' || (g % 50) || '.example.com', 'User ' || (g % 900),
  (200 + (g * 7) % 9000)::text, 'tenant' || ((g * 3) % 50) || '.example.com', '',
  t, t + interval '1 second', CASE WHEN g % 10 < 7 THEN t + ((g % 20) + 2) * interval '1 second' END,
  t + ((g % 20) + 2 + (g % 600)) * interval '1 second',
  'call-' || g, (ARRAY['INBOUND_CALL','OUTBOUND_CALL','EXTENSION_CALL','INBOUND_OUTBOUND_CALL'])[1 + g % 4],
  (ARRAY['CALLER_DISCONNECTED','CALLEE_DISCONNECTED','CANCELLED','REDIRECTED'])[1 + (g / 7) % 4],
  '', CASE WHEN g % 10 < 7 THEN 200 ELSE 486 END, '', '', '', 'trunk-' || (g % 20),
  CASE WHEN g % 10 < 7 THEN g % 600 ELSE 0 END, ((g % 1000) / 1000.0)::numeric(15,6),
  'acct-' || (g % 100), '', '', md5(g::text)::uuid
FROM (SELECT g, $time_sql AS t
      FROM generate_series(1, $rows) g) s;
SQL
}

insert_synthetic_cdrs() {
  synthetic_insert_sql "$@" | $P -d "$DB"
}
