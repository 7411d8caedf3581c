\set id random(1, :rows)
BEGIN;
SELECT amount FROM items WHERE id = :id;
UPDATE items SET amount = amount + 1 WHERE id = :id;
COMMIT;
