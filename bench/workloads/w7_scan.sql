COPY (SELECT * FROM items) TO '/dev/null';
