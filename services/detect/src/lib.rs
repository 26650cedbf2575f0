//! prism-detect
