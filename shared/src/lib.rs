//! Prism's common library.
pub mod imaging;
