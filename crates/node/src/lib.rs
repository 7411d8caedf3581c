//! conductor-node library
