SELECT id, customer_id, created FROM items ORDER BY created DESC LIMIT 10;
