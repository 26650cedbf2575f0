//! prism-dedup
