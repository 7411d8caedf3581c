//! Predicate IR that both parse front ends lower into (filled in by the routing issue).
