-- W11's dataset: :customers customers with 10 orders each on average, 4
-- lines per order; every column a deterministic function of the row number
-- and :seed, so each target gets the same data without a data file.
INSERT INTO orders (customer_id, order_id, amount, created)
SELECT 1 + (hashint8extended(o, :seed) & 9223372036854775807) % :customers,
       o,
       (hashint8extended(o, :seed + 1) & 9223372036854775807) % 100000,
       timestamptz '2024-01-01 00:00:00+00'
           + ((hashint8extended(o, :seed + 2) & 9223372036854775807) % 31536000) * interval '1 second'
  FROM generate_series(1, :customers * 10) AS o;
INSERT INTO order_lines (customer_id, order_id, line_no, sku, qty)
SELECT 1 + (hashint8extended(o, :seed) & 9223372036854775807) % :customers,
       o,
       n,
       'sku-' || (hashint8extended(o * 4 + n, :seed + 3) & 9223372036854775807) % 5000,
       1 + (hashint8extended(o * 4 + n, :seed + 4) & 9223372036854775807) % 9
  FROM generate_series(1, :customers * 10) AS o, generate_series(1, 4) AS n;
