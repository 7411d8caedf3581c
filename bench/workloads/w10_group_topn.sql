SELECT customer_id, count(*) FROM items GROUP BY customer_id ORDER BY count(*) DESC LIMIT 10;
