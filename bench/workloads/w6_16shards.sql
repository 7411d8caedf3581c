SELECT id, name FROM items WHERE customer_id = :c;
