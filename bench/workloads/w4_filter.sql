\set lo random(0, 99000)
\set hi :lo + 1000
SELECT id, customer_id, name, amount FROM items WHERE customer_id > :lo AND customer_id <= :hi;
