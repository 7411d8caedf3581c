SELECT sum(amount) FROM items;
