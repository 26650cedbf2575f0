//! The network's weights by their names in the state dict (`_blocks.3._depthwise_conv.weight`:
//! block 3's depthwise convolution), read from the safetensors file fetch-assets.sh converts.

use std::collections::HashMap;

use candle_core::{DType, Tensor};

use super::ModelError;

/// Weights not yet handed to the network.
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    pub fn new(tensors: HashMap<String, Tensor>) -> Self {
        Self { tensors }
    }

    /// Hands out the named tensor's values (once, row-major), checking it has the shape the
    /// network needs.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let tensor = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
            })?;
        if tensor.dims() != shape {
            return Err(ModelError::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: tensor.dims().to_vec(),
            });
        }
        if tensor.dtype() != DType::F32 {
            return Err(ModelError::UnsupportedTensor {
                name: name.to_owned(),
                dtype: format!("{:?}", tensor.dtype()),
            });
        }
        Ok(tensor.flatten_all()?.to_vec1()?)
    }

    /// Fails when weights were left over: the file holds a different architecture, and running
    /// it with some weights ignored would give silently wrong classes.
    pub fn finish(self) -> Result<(), ModelError> {
        if self.tensors.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = self.tensors.into_keys().collect();
        names.sort();
        Err(ModelError::UnusedTensors { names })
    }
}
