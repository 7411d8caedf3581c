\set c random(1, :customers)
SELECT o.order_id, o.amount, l.line_no, l.sku, l.qty
  FROM orders o JOIN order_lines l ON l.customer_id = o.customer_id AND l.order_id = o.order_id
 WHERE o.customer_id = :c;
