-- Sample sharded dataset for `make demo` (run by scripts/cluster.sh start,
-- once, into database `conductor`). Four nodes, one 16-shard table. The
-- nodes' URLs come in as psql variables node1_url .. node4_url.
\set ON_ERROR_STOP on
-- Setup statements print nothing worth reading; show only the queries below.
\o /dev/null

CREATE EXTENSION IF NOT EXISTS conductor;
CREATE SERVER cluster FOREIGN DATA WRAPPER conductor;

SELECT conductor.add_node('cluster', 'node-1', :'node1_url');
SELECT conductor.add_node('cluster', 'node-2', :'node2_url');
SELECT conductor.add_node('cluster', 'node-3', :'node3_url');
SELECT conductor.add_node('cluster', 'node-4', :'node4_url');

CREATE FOREIGN TABLE users (
    id         bigint NOT NULL,
    email      text,
    name       text,
    created_at timestamptz
) SERVER cluster;

SELECT conductor.create_distributed_table('users', 'id', shard_count => 16);

INSERT INTO users
SELECT i,
       'u' || i || '@example.com',
       'User ' || i,
       timestamptz '2026-01-01 00:00:00+00' + i * interval '1 minute'
FROM generate_series(1, 100000) AS i;

\o
-- A few queries to try (their output is shown by `make demo`).
\echo 'loaded: users, 100000 rows in 16 shards over 4 nodes'
\echo
\echo '-- every shard, all at once:'
SELECT count(*) FROM users;
\echo '-- one shard (the key routes it):'
SELECT * FROM users WHERE id = 42;
\echo '-- where id 42 lives:'
SELECT conductor.shard_for('users', 42::bigint);
