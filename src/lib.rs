//! tlsrelay
