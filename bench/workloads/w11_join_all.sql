SELECT count(*), sum(l.qty), sum(o.amount)
  FROM orders o JOIN order_lines l ON l.customer_id = o.customer_id AND l.order_id = o.order_id;
