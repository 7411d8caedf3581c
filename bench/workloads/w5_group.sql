SELECT flag, count(*), sum(amount) FROM items GROUP BY flag ORDER BY flag;
