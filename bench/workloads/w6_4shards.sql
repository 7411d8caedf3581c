SELECT id, name FROM items WHERE id IN (:k1, :k2, :k3, :k4);
