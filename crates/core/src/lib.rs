//! conductor core (see docs/ARCHITECTURE.md)
