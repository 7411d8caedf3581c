-- conductor's topology catalog. Ordinary tables in schema conductor; every
-- backend caches what it reads and a change invalidates every backend's cache
-- at commit (see the triggers at the end and src/catalog/cache.rs).
--
-- pg_dump dumps their rows (pg_extension_config_dump below) and recreates
-- servers and foreign tables with new oids, so what the rows refer to must
-- survive a restore: tables are regclass (dumped as names), and the server
-- oids are recomputed when a row is inserted (sql/finalize.sql): from the
-- server's name for nodes, from the foreign table for everything else.

-- A storage node of a foreign server. Nodes belong to one server, so two
-- clusters can live side by side in one database.
CREATE TABLE conductor.node (
    server_id oid NOT NULL,
    -- The server's name, kept up to date on ALTER SERVER ... RENAME: what
    -- a restore finds the server by.
    server_name name NOT NULL,
    node_id text NOT NULL CHECK (node_id ~ '^[A-Za-z0-9_.-]{1,63}$'),
    url text NOT NULL CHECK (url ~ '^https?://[^/\s]+/?$'),
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'disabled')),
    -- The node offers conductor-node's exact decimal aggregates (probed by
    -- add_node/update_node); a table's numeric sum/avg/min/max go to its
    -- nodes only when all of them do.
    decimal_aggregates boolean NOT NULL DEFAULT false,
    PRIMARY KEY (server_id, node_id)
);

-- A foreign table whose rows are hash-sharded over the nodes of its server.
CREATE TABLE conductor.distributed_table (
    relid regclass PRIMARY KEY,
    server_id oid NOT NULL,
    -- Shard tables on the nodes are named <remote_name>_<shard id, 4 digits>.
    remote_name text NOT NULL,
    shard_key name NOT NULL,
    -- The columns that identify a row (they include the shard key); the
    -- shard tables' PRIMARY KEY, used by UPDATE/DELETE that fetch rows first.
    primary_key name[] NOT NULL,
    shard_count integer NOT NULL CHECK (shard_count BETWEEN 1 AND 4096),
    -- Placement hash version (docs/ARCHITECTURE.md, Placement); a table
    -- keeps the version it was created with.
    hash_version integer NOT NULL DEFAULT 1,
    -- The columns the shard tables have ([{attnum, name, ty, typmod,
    -- not_null}]): an ALTER of the foreign table is carried to the shards
    -- as the difference between these and its new columns.
    shard_columns jsonb NOT NULL DEFAULT '[]',
    UNIQUE (server_id, remote_name)
);

-- Where each shard lives. status and target_node_id describe a move in
-- progress: the source keeps serving while the target catches up.
CREATE TABLE conductor.shard (
    relid regclass NOT NULL REFERENCES conductor.distributed_table ON DELETE CASCADE,
    shard_id integer NOT NULL CHECK (shard_id >= 0),
    server_id oid NOT NULL,
    node_id text NOT NULL,
    status text NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'rebalancing_source', 'rebalancing_target')),
    target_node_id text,
    PRIMARY KEY (relid, shard_id),
    FOREIGN KEY (server_id, node_id) REFERENCES conductor.node ON UPDATE CASCADE
);
CREATE INDEX shard_node_idx ON conductor.shard (server_id, node_id);

-- Indexes every shard table carries (conductor.create_shard_index); on a
-- node each is named <shard table>_<index_name>.
CREATE TABLE conductor.shard_index (
    index_name text PRIMARY KEY CHECK (length(index_name) BETWEEN 1 AND 48),
    relid regclass NOT NULL REFERENCES conductor.distributed_table ON DELETE CASCADE,
    columns name[] NOT NULL,
    is_unique boolean NOT NULL DEFAULT false
);

-- Shard tables left on a node that could not be reached when they were to
-- be dropped; conductor.cleanup() drops them once it answers. The URL is
-- kept in case the node (or its server) is forgotten meanwhile.
CREATE TABLE conductor.cleanup (
    server_id oid NOT NULL,
    server_name name,
    node_id text NOT NULL,
    url text NOT NULL,
    table_name text NOT NULL,
    reason text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (server_id, node_id, table_name)
);

REVOKE ALL ON conductor.node, conductor.distributed_table, conductor.shard,
    conductor.shard_index, conductor.cleanup FROM PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('conductor.node', '');
SELECT pg_catalog.pg_extension_config_dump('conductor.distributed_table', '');
SELECT pg_catalog.pg_extension_config_dump('conductor.shard', '');
SELECT pg_catalog.pg_extension_config_dump('conductor.shard_index', '');
SELECT pg_catalog.pg_extension_config_dump('conductor.cleanup', '');

-- Shard moves, running and past (conductor.move_shard; docs/ARCHITECTURE.md,
-- Moving shards). A row is written before a move touches any node, and
-- everything a move creates on a node is named after the shard table, so
-- what a move that died left behind is found from its row alone. phase:
-- starting, copying, catching_up, cutting_over, switched (the catalog points
-- at the target; set in the same transaction), done, aborted. cleaned: the
-- move left nothing on any node (or what it left is in conductor.cleanup).
CREATE SEQUENCE conductor.shard_move_seq;
CREATE TABLE conductor.shard_move (
    move_id bigint PRIMARY KEY DEFAULT nextval('conductor.shard_move_seq'),
    relid regclass NOT NULL,
    shard_id integer NOT NULL,
    server_id oid NOT NULL,
    source_node text NOT NULL,
    target_node text NOT NULL,
    remote_table text NOT NULL,
    phase text NOT NULL DEFAULT 'starting'
        CHECK (phase IN ('starting', 'copying', 'catching_up', 'cutting_over',
                         'switched', 'done', 'aborted')),
    -- The primary key of the last row copied (Hrana values as JSON).
    last_key jsonb,
    rows_copied bigint NOT NULL DEFAULT 0,
    changes_applied bigint NOT NULL DEFAULT 0,
    changes_pending bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    block_ms double precision,
    -- When the catalog switched to the target: the old copy is dropped
    -- once every transaction older than that has ended.
    switched_at timestamptz,
    finished_at timestamptz,
    error text,
    -- The backend running the move: a move whose backend is gone or idle
    -- is no longer running and may be cleaned up.
    pid integer,
    backend_start timestamptz,
    cleaned boolean NOT NULL DEFAULT false
);
CREATE INDEX shard_move_shard_idx ON conductor.shard_move (relid, shard_id);
REVOKE ALL ON conductor.shard_move, conductor.shard_move_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('conductor.shard_move', '');
SELECT pg_catalog.pg_extension_config_dump('conductor.shard_move_seq', '');

-- Virtual indexes (conductor.create_virtual_index): for each value of the
-- columns, which shards hold it. The entries live on the nodes, in lookup
-- tables <remote_name>_vx_<index_name>_<shard id> placed like the table's
-- shards (docs/ARCHITECTURE.md, Virtual indexes). status: 'building' (writes
-- keep entries, routing ignores it, backfill_shards of the table's shards are
-- done), 'ready' (routing uses it), 'failed' (a build that did not finish).
CREATE TABLE conductor.virtual_index (
    index_name text PRIMARY KEY CHECK (index_name ~ '^[A-Za-z0-9_]{1,40}$'),
    relid regclass NOT NULL REFERENCES conductor.distributed_table ON DELETE CASCADE,
    columns name[] NOT NULL,
    is_unique boolean NOT NULL DEFAULT false,
    status text NOT NULL DEFAULT 'building'
        CHECK (status IN ('building', 'ready', 'failed')),
    -- The backend running the build; a 'building' index whose builder is
    -- gone is shown as failed.
    builder_pid integer,
    backfill_shards integer NOT NULL DEFAULT 0,
    backfill_rows bigint NOT NULL DEFAULT 0,
    -- The primary key of the last row backfilled on the current shard.
    backfill_position jsonb,
    failure text,
    -- Whether the lookup tables live in each node's lookup database (a
    -- second SQLite file with its own write lock, conductor-node's
    -- /lookup endpoints) rather than beside the shards (nodes without one).
    lookup_database boolean NOT NULL DEFAULT false
);
REVOKE ALL ON conductor.virtual_index FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('conductor.virtual_index', '');

-- Co-location groups. Tables of one group have shard i on the same node
-- for every i (the placement of a new member is copied from the group, and
-- a shard move moves the group's shard i together), so a join on their
-- shard keys runs per shard on the nodes. A table's own group is a fresh
-- number; conductor.create_distributed_table(colocate_with => ...) joins
-- an existing one.
CREATE SEQUENCE conductor.colocation_id_seq AS integer;
ALTER TABLE conductor.distributed_table
    ADD COLUMN colocation_id integer NOT NULL
        DEFAULT nextval('conductor.colocation_id_seq');
CREATE INDEX distributed_table_colocation_idx
    ON conductor.distributed_table (colocation_id);
REVOKE ALL ON SEQUENCE conductor.colocation_id_seq FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('conductor.colocation_id_seq', '');

-- Reference tables: a distributed_table of one shard whose shard table
-- (<remote_name>_0000) is copied in full on every node listed here. Reads
-- go to one of them; writes go to all of them in the statement's
-- transaction; conductor.add_node copies the table to a new node. The
-- conductor.shard row of shard 0 names the node reads prefer.
CREATE TABLE conductor.reference_placement (
    relid regclass NOT NULL REFERENCES conductor.distributed_table ON DELETE CASCADE,
    server_id oid NOT NULL,
    node_id text NOT NULL,
    PRIMARY KEY (relid, node_id),
    FOREIGN KEY (server_id, node_id) REFERENCES conductor.node ON UPDATE CASCADE
);
REVOKE ALL ON conductor.reference_placement FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('conductor.reference_placement', '');
