-- A key above the dataset's, in a range of its own for every run (:run)
-- so no run draws a key an earlier one inserted; within a run two clients
-- drawing the same key out of 10^15 is not a concern.
\set id :rows + 1 + :run * 1000000000000000 + random(0, 999999999999999)
INSERT INTO items (id, customer_id, name, email, amount, created, flag)
VALUES (:id, 42, 'new', 'new@example.com', 1.00, timestamptz '2024-06-01 00:00:00+00', true);
