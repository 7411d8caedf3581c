-- A random existing row's email, computed on the router as load.sql made
-- it (pgbench's \set only makes numbers; concat_ws, since pgbench would
-- read the ':email' of a quoted ':email:' as a variable), then the lookup
-- by email with it as a parameter (-M prepared: $1).
\set i random(1, :rows)
SELECT substr(md5(concat_ws(':', :seed::text, 'email', :i::text)), 1, 16) || '@example.com' AS email \gset
SELECT id, customer_id, name, email, amount, created, flag FROM items WHERE email = :email;
