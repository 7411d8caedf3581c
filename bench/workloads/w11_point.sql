\set id random(1, :rows)
SELECT id, customer_id, name, email, amount, created, flag FROM items WHERE id = :id;
