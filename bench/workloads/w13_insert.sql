-- Keys above the dataset's, drawn from a range so wide that two clients
-- picking the same one is not a concern for a benchmark run.
\set id random(:rows + 1, 4000000000000000000)
INSERT INTO items (id, customer_id, name, email, amount, created, flag)
VALUES (:id, 42, 'new', 'new@example.com', 1.00, timestamptz '2024-06-01 00:00:00+00', true);
