//! RFC 6455 frames (being written).
