//! The network's weights by their Ultralytics names (`model.2.m.0.cv1.conv.weight`: layer 2,
//! its first bottleneck, first conv), exactly as the ONNX export keeps them.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::ModelError;
use super::onnx::Initializer;

/// Every weight of the network is named under this prefix; other initializers are constants the
/// exporter folded out of the graph (anchors, split sizes) that the network computes itself.
const NETWORK_PREFIX: &str = "model.";

/// Weights not yet handed to the network.
pub struct Weights {
    tensors: HashMap<String, Initializer>,
    device: Device,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Initializer>, device: Device) -> Self {
        Self { tensors, device }
    }

    /// Hands out the named tensor (once), checking it has the shape the network needs.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let initializer = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
            })?;
        if initializer.dims != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: initializer.dims,
            });
        }
        let (dims, data_type) = (initializer.dims.clone(), initializer.data_type);
        let values = initializer
            .into_f32()
            .ok_or_else(|| ModelError::UnsupportedTensor {
                name: name.to_owned(),
                data_type,
            })?;
        let expected = dims.iter().product();
        if values.len() != expected {
            return Err(ModelError::CorruptTensor {
                name: name.to_owned(),
                dims,
                expected,
                found: values.len(),
            });
        }
        Ok(Tensor::from_vec(values, shape, &self.device)?)
    }

    /// Fails when network weights were left over: the file holds a different architecture, and
    /// running it with some weights ignored would give silently wrong detections.
    pub fn finish(self) -> Result<(), ModelError> {
        let mut names: Vec<String> = self
            .tensors
            .into_keys()
            .filter(|name| name.starts_with(NETWORK_PREFIX))
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        names.sort();
        Err(ModelError::UnusedTensors { names })
    }
}
