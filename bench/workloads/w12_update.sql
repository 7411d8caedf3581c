\set id random(1, :rows)
UPDATE items SET amount = amount + 1 WHERE id = :id;
