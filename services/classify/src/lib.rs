//! Classify: says what is in a picture, as the five likeliest of the 1000 ImageNet classes, with
//! Prism's own EfficientNet-Lite0 (weights read with candle, convolutions on the shared kernels of
//! prism-inference).
//!
//! [`model`] is the network and its preprocessing. The pipeline stage (topics, batching, dead
//! letters, fingerprint) is not written yet.

pub mod model;
