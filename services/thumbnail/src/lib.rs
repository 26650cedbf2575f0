//! prism-thumbnail
pub mod stage;
