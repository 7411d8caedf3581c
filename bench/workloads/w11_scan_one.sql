\set c random(1, :customers)
SELECT o.order_id, o.amount FROM orders o WHERE o.customer_id = :c;
