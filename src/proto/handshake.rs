//! HTTP/1.1 upgrade (being written).
