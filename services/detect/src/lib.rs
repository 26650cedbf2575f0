//! prism-detect
pub mod model;
