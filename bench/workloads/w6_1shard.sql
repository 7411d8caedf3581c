SELECT id, name FROM items WHERE id = :k1;
