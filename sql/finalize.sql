-- Objects that need the extension's C functions: the FDW itself, the
-- catalog's invalidation triggers, drop handling and the views.

CREATE FOREIGN DATA WRAPPER conductor
    HANDLER conductor.conductor_fdw_handler
    VALIDATOR conductor.conductor_fdw_validator;

-- Topology is readable by everyone who may query a sharded table (a scan
-- reads it to route); only superusers or explicitly granted roles change it.
GRANT USAGE ON SCHEMA conductor TO PUBLIC;
GRANT SELECT ON conductor.node, conductor.distributed_table, conductor.shard,
    conductor.shard_index, conductor.virtual_index, conductor.reference_placement TO PUBLIC;
REVOKE EXECUTE ON FUNCTION
    conductor.add_node(text, text, text),
    conductor.update_node(text, text, text),
    conductor.remove_node(text, text),
    conductor.create_distributed_table(regclass, text, integer, text),
    conductor.create_reference_table(regclass),
    conductor.create_shard_index(regclass, text[], text, boolean),
    conductor.drop_shard_index(text),
    conductor.cleanup(),
    conductor._vidx_begin(regclass, text[], boolean, text),
    conductor._vidx_backfill_step(text),
    conductor._vidx_finish(text),
    conductor._vidx_fail(text, text),
    conductor.drop_virtual_index(text),
    conductor.verify_virtual_index(text, boolean)
FROM PUBLIC;

-- Any committed change to the topology invalidates every backend's cache
-- (Postgres' own transactional invalidation; src/catalog/cache.rs).
CREATE FUNCTION conductor._topology_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conductor._invalidate_topology_cache();
    RETURN NULL;
END
$$;
CREATE TRIGGER topology_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON conductor.node FOR EACH STATEMENT EXECUTE FUNCTION conductor._topology_changed();
CREATE TRIGGER topology_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON conductor.distributed_table FOR EACH STATEMENT EXECUTE FUNCTION conductor._topology_changed();
CREATE TRIGGER topology_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON conductor.shard FOR EACH STATEMENT EXECUTE FUNCTION conductor._topology_changed();
CREATE TRIGGER topology_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON conductor.virtual_index FOR EACH STATEMENT EXECUTE FUNCTION conductor._topology_changed();

-- Server oids in the catalog rows, recomputed on every insert, so rows that
-- pg_restore copies in (with the oids of the dumped database) point at the
-- restored servers. A node row names its server; a row that carries no
-- name (an insert by conductor itself) gets it from the oid.
CREATE FUNCTION conductor._resolve_node_server() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.server_name IS NULL THEN
        NEW.server_name := (SELECT srvname FROM pg_catalog.pg_foreign_server
                             WHERE oid = NEW.server_id);
    ELSE
        NEW.server_id := coalesce((SELECT oid FROM pg_catalog.pg_foreign_server
                                    WHERE srvname = NEW.server_name), 0);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER resolve_server BEFORE INSERT ON conductor.node
    FOR EACH ROW EXECUTE FUNCTION conductor._resolve_node_server();
-- A cleanup row outlives its server (the URL is what it needs then).
CREATE TRIGGER resolve_server BEFORE INSERT ON conductor.cleanup
    FOR EACH ROW EXECUTE FUNCTION conductor._resolve_node_server();

-- A distributed table's server is its foreign table's, and so is each of
-- its shards'. Its recorded columns are keyed by attnum, which a restore
-- renumbers when the table had dropped columns: they are found again by
-- name.
CREATE FUNCTION conductor._resolve_table_server() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.server_id := (SELECT ftserver FROM pg_catalog.pg_foreign_table
                       WHERE ftrelid = NEW.relid);
    NEW.shard_columns := (
        SELECT coalesce(jsonb_agg(CASE WHEN a.attnum IS NULL THEN c.col
                                       ELSE jsonb_set(c.col, '{attnum}', to_jsonb(a.attnum)) END
                                  ORDER BY c.i), '[]'::jsonb)
          FROM jsonb_array_elements(NEW.shard_columns) WITH ORDINALITY AS c(col, i)
          LEFT JOIN pg_catalog.pg_attribute a
            ON a.attrelid = NEW.relid AND a.attname = c.col->>'name'
           AND a.attnum > 0 AND NOT a.attisdropped);
    RETURN NEW;
END
$$;
CREATE TRIGGER resolve_server BEFORE INSERT ON conductor.distributed_table
    FOR EACH ROW EXECUTE FUNCTION conductor._resolve_table_server();

CREATE FUNCTION conductor._resolve_shard_server() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.server_id := (SELECT server_id FROM conductor.distributed_table
                       WHERE relid = NEW.relid);
    RETURN NEW;
END
$$;
CREATE TRIGGER resolve_server BEFORE INSERT ON conductor.shard
    FOR EACH ROW EXECUTE FUNCTION conductor._resolve_shard_server();
CREATE TRIGGER resolve_server BEFORE INSERT ON conductor.reference_placement
    FOR EACH ROW EXECUTE FUNCTION conductor._resolve_shard_server();
CREATE TRIGGER topology_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON conductor.reference_placement FOR EACH STATEMENT EXECUTE FUNCTION conductor._topology_changed();

-- ALTER SERVER ... RENAME: the node rows keep the name a restore needs.
-- It fires for every server's ALTER, also by roles that may not write the
-- catalog (a postgres_fdw server's owner), and only copies names from
-- pg_foreign_server: hence SECURITY DEFINER.
CREATE FUNCTION conductor._on_alter_server() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE conductor.node n SET server_name = s.srvname
      FROM pg_catalog.pg_foreign_server s
     WHERE s.oid = n.server_id AND n.server_name <> s.srvname;
    UPDATE conductor.cleanup c SET server_name = s.srvname
      FROM pg_catalog.pg_foreign_server s
     WHERE s.oid = c.server_id AND c.server_name IS DISTINCT FROM s.srvname;
END
$$;
CREATE EVENT TRIGGER conductor_alter_server ON ddl_command_end
    WHEN TAG IN ('ALTER SERVER')
    EXECUTE FUNCTION conductor._on_alter_server();

-- Dropping a distributed foreign table (directly, or through DROP SERVER /
-- DROP SCHEMA ... CASCADE) forgets it and drops its shard tables on the
-- nodes when the transaction commits. Node tokens live in user mappings,
-- which a DROP SERVER CASCADE removes before sql_drop fires, so they are
-- remembered at the start of every DROP.
CREATE FUNCTION conductor._before_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conductor._remember_node_credentials();
END
$$;
CREATE EVENT TRIGGER conductor_before_drop ON ddl_command_start
    WHEN TAG IN ('DROP FOREIGN TABLE', 'DROP SERVER', 'DROP SCHEMA', 'DROP OWNED',
                 'DROP FOREIGN DATA WRAPPER')
    EXECUTE FUNCTION conductor._before_drop();

CREATE FUNCTION conductor._on_sql_drop() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    obj record;
BEGIN
    -- Tables first: forgetting a table queues the drop of its shard tables
    -- (which needs its nodes' addresses) and removes its shard rows, which
    -- reference the nodes a dropped server's forgetting deletes. The order
    -- of pg_event_trigger_dropped_objects() puts the server first.
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
               WHERE object_type = 'foreign table'
    LOOP
        PERFORM conductor._forget_distributed_table(obj.objid);
    END LOOP;
    FOR obj IN SELECT * FROM pg_event_trigger_dropped_objects()
               WHERE object_type = 'server'
    LOOP
        PERFORM conductor._forget_server(obj.objid);
    END LOOP;
END
$$;
CREATE EVENT TRIGGER conductor_sql_drop ON sql_drop
    EXECUTE FUNCTION conductor._on_sql_drop();

-- An ALTER of a distributed foreign table is carried to its shard tables in
-- the same transaction, or refused (src/api/schema.rs).
CREATE FUNCTION conductor._on_alter() RETURNS event_trigger
LANGUAGE plpgsql AS $$
DECLARE
    rel oid;
BEGIN
    FOR rel IN SELECT DISTINCT objid FROM pg_event_trigger_ddl_commands()
               WHERE classid = 'pg_catalog.pg_class'::regclass
    LOOP
        PERFORM conductor._sync_shard_schema(rel);
    END LOOP;
END
$$;
CREATE EVENT TRIGGER conductor_alter ON ddl_command_end
    WHEN TAG IN ('ALTER FOREIGN TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION conductor._on_alter();

-- health, last_error: what the sessions have seen of the node (shared
-- memory; without conductor in shared_preload_libraries, what the querying
-- session has seen; src/health.rs); a node not talked to yet shows as
-- healthy.
CREATE VIEW conductor.nodes AS
SELECT s.srvname AS server,
       n.node_id,
       n.url,
       n.status,
       (SELECT count(*) FROM conductor.shard sh
         WHERE sh.server_id = n.server_id AND sh.node_id = n.node_id) AS shards,
       CASE WHEN coalesce(h.healthy, true) THEN 'healthy' ELSE 'unhealthy' END AS health,
       coalesce(h.consecutive_failures, 0) AS consecutive_failures,
       h.last_error,
       h.last_error_at,
       n.decimal_aggregates
  FROM conductor.node n
  JOIN pg_catalog.pg_foreign_server s ON s.oid = n.server_id
  LEFT JOIN conductor.node_health() h ON h.url = n.url;

CREATE VIEW conductor.tables AS
SELECT t.relid::regclass AS table_name,
       s.srvname AS server,
       t.remote_name,
       t.shard_key,
       t.shard_count,
       t.hash_version,
       t.colocation_id,
       EXISTS (SELECT FROM conductor.reference_placement r WHERE r.relid = t.relid) AS reference
  FROM conductor.distributed_table t
  JOIN pg_catalog.pg_foreign_server s ON s.oid = t.server_id;

CREATE VIEW conductor.shards AS
SELECT sh.relid::regclass AS table_name,
       sh.shard_id,
       sh.node_id,
       n.url,
       sh.status,
       sh.target_node_id,
       t.remote_name || '_' || lpad(sh.shard_id::text, 4, '0') AS remote_table
  FROM conductor.shard sh
  JOIN conductor.distributed_table t USING (relid)
  JOIN conductor.node n ON n.server_id = sh.server_id AND n.node_id = sh.node_id;

CREATE VIEW conductor.shard_indexes AS
SELECT i.relid::regclass AS table_name,
       i.index_name,
       i.columns,
       i.is_unique
  FROM conductor.shard_index i;

CREATE VIEW conductor.cleanup_pending AS
SELECT s.srvname AS server, c.node_id, c.url, c.table_name, c.reason, c.recorded_at
  FROM conductor.cleanup c
  LEFT JOIN pg_catalog.pg_foreign_server s ON s.oid = c.server_id;

-- status: a build whose backend no longer runs it (cancelled, or the
-- session died) shows as failed; entries are counted on the nodes now.
CREATE VIEW conductor.virtual_indexes AS
SELECT v.relid::regclass AS table_name,
       v.index_name,
       v.columns,
       v.is_unique,
       CASE WHEN v.status = 'building' AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_stat_activity a
                 WHERE a.pid = v.builder_pid AND a.state = 'active')
            THEN 'failed' ELSE v.status END AS status,
       CASE WHEN v.status = 'failed' THEN NULL
            ELSE conductor.virtual_index_entries(v.index_name) END AS entries,
       v.backfill_shards AS shards_backfilled,
       t.shard_count AS shards,
       v.backfill_rows AS rows_backfilled,
       v.failure
  FROM conductor.virtual_index v
  JOIN conductor.distributed_table t USING (relid);

-- Builds an index without blocking writes: each step commits. CALL it
-- outside a transaction block.
CREATE PROCEDURE conductor.create_virtual_index(
    tbl regclass, columns text[], is_unique boolean DEFAULT false, name text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    ix text;
    started timestamptz;
    done boolean := false;
    failure text;
    failure_state text;
    failure_detail text;
BEGIN
    ix := conductor._vidx_begin(tbl, columns, is_unique, name);
    COMMIT;
    -- A transaction that began before the index was recorded may still
    -- write without knowing it: wait for every such one to end, as CREATE
    -- INDEX CONCURRENTLY does; every later write keeps the entries.
    started := pg_catalog.clock_timestamp();
    LOOP
        PERFORM pg_catalog.pg_stat_clear_snapshot();
        EXIT WHEN NOT EXISTS (
            SELECT FROM pg_catalog.pg_stat_activity
             WHERE pid <> pg_catalog.pg_backend_pid()
               AND backend_type = 'client backend'
               AND xact_start < started);
        PERFORM pg_catalog.pg_sleep(0.05);
    END LOOP;
    LOOP
        BEGIN
            done := conductor._vidx_backfill_step(ix);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS failure = MESSAGE_TEXT,
                                    failure_state = RETURNED_SQLSTATE,
                                    failure_detail = PG_EXCEPTION_DETAIL;
        END;
        IF failure IS NOT NULL THEN
            PERFORM conductor._vidx_fail(ix, failure);
            COMMIT;
            RAISE EXCEPTION USING ERRCODE = failure_state, MESSAGE = failure,
                DETAIL = coalesce(failure_detail, ''),
                HINT = format('Virtual index %s is left failed; drop it with conductor.drop_virtual_index(%L).', ix, ix);
        END IF;
        COMMIT;
        EXIT WHEN done;
    END LOOP;
    PERFORM conductor._vidx_finish(ix);
    COMMIT;
END
$$;
REVOKE EXECUTE ON PROCEDURE conductor.create_virtual_index(regclass, text[], boolean, text)
    FROM PUBLIC;

GRANT SELECT ON conductor.nodes, conductor.tables, conductor.shards,
    conductor.shard_indexes, conductor.cleanup_pending, conductor.virtual_indexes TO PUBLIC;

-- Shared statistics (src/stats.rs): they exist when conductor is in
-- shared_preload_libraries; otherwise reading a view raises an error that
-- says how to enable them. Statement texts and shard-key values may show
-- other users' data: those two are readable by superusers and roles granted
-- SELECT only.
CREATE VIEW conductor.stat_statements AS
SELECT s.queryid, s.table_name::regclass AS table_name, s.query, s.calls, s.rows,
       s.total_time_ms, s.mean_time_ms, s.max_time_ms, s.remote_time_ms,
       s.one_shard, s.some_shards, s.all_shards, s.retries, s.errors
  FROM conductor._stat_statements() s;

CREATE VIEW conductor.stat_nodes AS
SELECT s.node_id, s.url, s.requests, s.errors, s.timeouts, s.rows,
       s.bytes_out, s.bytes_in, s.p50_ms, s.p95_ms, s.p99_ms, s.in_flight,
       CASE WHEN coalesce(h.healthy, true) THEN 'healthy' ELSE 'unhealthy' END AS health
  FROM conductor._stat_nodes() s
  LEFT JOIN conductor.node_health() h ON h.url = s.url;

CREATE VIEW conductor.stat_shards AS
SELECT s.table_name::regclass AS table_name, s.shard_id, sh.node_id,
       s.reads, s.writes, s.rows
  FROM conductor._stat_shards() s
  LEFT JOIN conductor.shard sh ON sh.relid = s.table_name::regclass AND sh.shard_id = s.shard_id;

CREATE VIEW conductor.stat_shard_keys AS
SELECT s.table_name::regclass AS table_name, s.key_value, s.statements, s.overcount_max
  FROM conductor._stat_shard_keys() s;

GRANT SELECT ON conductor.stat_nodes, conductor.stat_shards TO PUBLIC;
REVOKE EXECUTE ON FUNCTION conductor.stat_statements_reset(), conductor.stat_reset() FROM PUBLIC;

-- conductor_explain(sql) is callable without schema qualification: a thin
-- wrapper in schema public (when the database has it) over conductor.explain.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'public') THEN
        CREATE FUNCTION public.conductor_explain(sql text)
        RETURNS TABLE (table_name text, shard_id integer, node_id text, node_url text,
                       remote_sql text, args jsonb, reason text)
        LANGUAGE sql VOLATILE
        AS 'SELECT * FROM conductor.explain(sql)';
    END IF;
END
$$;

-- Shard moves (src/api/moves.rs; docs/ARCHITECTURE.md, Moving shards). A
-- move is a procedure because each of its steps commits: its progress is
-- visible to other sessions, and what it has done on the nodes is recorded
-- before the next step, so a backend that dies leaves a record the next
-- move or conductor.cleanup_moves() acts on. A step that fails is undone
-- (the source stays authoritative) before the error is raised again.
CREATE PROCEDURE conductor._move_one(tbl regclass, shard integer, to_node text)
LANGUAGE plpgsql AS $$
DECLARE
    m bigint;
    phase text;
    failed boolean := false;
    st text;
    msg text;
    det text;
    hnt text;
BEGIN
    m := conductor._move_start(tbl, shard, to_node);
    COMMIT;
    IF m IS NULL THEN
        RETURN; -- already there
    END IF;
    LOOP
        BEGIN
            phase := conductor._move_step(m);
        EXCEPTION WHEN query_canceled OR others THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
            failed := true;
        END;
        IF failed THEN
            PERFORM conductor._move_abort(m, msg);
            COMMIT;
            -- A failure after the catalog switched (while the old copy is
            -- dropped) leaves the shard moved.
            IF phase = 'switched' THEN
                RAISE EXCEPTION USING ERRCODE = st, MESSAGE = msg,
                    DETAIL = concat_ws(E'\n', nullif(det, ''),
                        format('Move %s of shard %s of %s to node %s had switched: the shard is on node %s; its old copy is left on the source, fenced.',
                               m, shard, tbl, to_node, to_node)),
                    HINT = 'SELECT * FROM conductor.cleanup_moves() drops the old copy.';
            END IF;
            RAISE EXCEPTION USING ERRCODE = st, MESSAGE = msg,
                DETAIL = concat_ws(E'\n', nullif(det, ''),
                    format('Move %s of shard %s of %s to node %s was abandoned; the source copy stays authoritative.',
                           m, shard, tbl, to_node)),
                HINT = coalesce(nullif(hnt, ''),
                    'conductor.shard_moves shows the move; CALL conductor.move_shard() again once the cause is fixed.');
        END IF;
        COMMIT;
        EXIT WHEN phase = 'done';
    END LOOP;
END
$$;

CREATE PROCEDURE conductor.move_shard(tbl regclass, shard integer, to_node text)
LANGUAGE plpgsql AS $$
DECLARE
    t regclass;
BEGIN
    -- A co-location group's shard moves with it, table by table.
    FOREACH t IN ARRAY ARRAY(SELECT g::regclass FROM conductor._move_group(tbl) g) LOOP
        CALL conductor._move_one(t, shard, to_node);
    END LOOP;
END
$$;

CREATE PROCEDURE conductor.rebalance(server text)
LANGUAGE plpgsql AS $$
DECLARE
    mv record;
BEGIN
    -- The plan is read whole before the first move commits (the loop's
    -- cursor is made holdable), so it is the plan of the start.
    FOR mv IN SELECT * FROM conductor.rebalance_plan(server) LOOP
        CALL conductor.move_shard(mv.table_name, mv.shard_id, mv.target_node);
    END LOOP;
END
$$;

CREATE PROCEDURE conductor.drain_node(server text, node_id text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM conductor._drain_mark(server, node_id);
    COMMIT;
    CALL conductor.rebalance(server);
END
$$;

CREATE FUNCTION conductor.rebalance_plan(server text)
RETURNS TABLE (table_name regclass, shard_id integer, source_node text, target_node text)
LANGUAGE sql VOLATILE
AS 'SELECT relid::regclass, shard_id, source_node, target_node FROM conductor._rebalance_plan(server)';

REVOKE EXECUTE ON PROCEDURE
    conductor.move_shard(regclass, integer, text),
    conductor._move_one(regclass, integer, text),
    conductor.rebalance(text),
    conductor.drain_node(text, text)
FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    conductor._move_start(oid, integer, text),
    conductor._move_group(oid),
    conductor._rebalance_plan(text),
    conductor._move_step(bigint),
    conductor._move_abort(bigint, text),
    conductor._drain_mark(text, text),
    conductor.cleanup_moves(),
    conductor.rebalance_plan(text)
FROM PUBLIC;

CREATE VIEW conductor.shard_moves AS
SELECT m.move_id,
       m.relid AS table_name,
       m.shard_id,
       m.source_node,
       m.target_node,
       m.phase,
       m.rows_copied,
       m.changes_applied,
       m.changes_pending,
       m.started_at,
       m.finished_at,
       m.block_ms,
       m.error,
       m.cleaned
  FROM conductor.shard_move m;
GRANT SELECT ON conductor.shard_moves TO PUBLIC;
