-- The dataset (and W8): rows 1..:rows, every column a deterministic
-- function of i and :seed (hashint8extended, md5), so each run and each
-- target gets the same data without a data file.
INSERT INTO items (id, customer_id, name, email, amount, created, flag)
SELECT i,
       1 + (hashint8extended(i, :seed) & 9223372036854775807) % 100000,
       'Customer ' || substr(md5(:seed || ':name:' || i), 1, 12),
       substr(md5(:seed || ':email:' || i), 1, 16) || '@example.com',
       ((hashint8extended(i, :seed + 1) & 9223372036854775807) % 1000000 / 100.0)::numeric(12,2),
       timestamptz '2024-01-01 00:00:00+00'
           + ((hashint8extended(i, :seed + 2) & 9223372036854775807) % 31536000) * interval '1 second',
       (hashint8extended(i, :seed + 3) & 1) = 0
  FROM generate_series(1, :rows) AS i;
