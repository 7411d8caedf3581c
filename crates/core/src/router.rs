//! QueryRouter: predicate IR + topology → target shards (filled in by the routing issue).
