//! prism-thumbnail
