-- W15's yardstick: the same transaction, looking the row up by its key.
\set i random(1, :rows)
SELECT substr(md5(concat_ws(':', :seed::text, 'email', :i::text)), 1, 16) || '@example.com' AS email \gset
SELECT id, customer_id, name, email, amount, created, flag FROM items WHERE id = :i;
