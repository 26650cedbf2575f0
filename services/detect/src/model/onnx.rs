//! Reads the weight tensors (graph initializers) out of an ONNX file. ONNX is protobuf; only the
//! handful of fields on the path model -> graph -> initializer are declared here (field numbers
//! from onnx.proto), so no code generator or `protoc` is needed and everything else is skipped.

use std::collections::HashMap;

use prost::Message;

/// `TensorProto.DataType.FLOAT`.
pub const DATA_TYPE_FLOAT: i32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    /// Used by some exporters instead of `raw_data`.
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
    /// Little-endian values, the usual encoding.
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
}

/// One initializer, values not yet interpreted.
#[derive(Debug, Clone, PartialEq)]
pub struct Initializer {
    pub dims: Vec<usize>,
    pub data_type: i32,
    pub values: InitializerValues,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InitializerValues {
    Raw(Vec<u8>),
    Float(Vec<f32>),
}

impl Initializer {
    /// The values as float32, when that is what the tensor holds.
    pub fn into_f32(self) -> Option<Vec<f32>> {
        if self.data_type != DATA_TYPE_FLOAT {
            return None;
        }
        Some(match self.values {
            InitializerValues::Float(values) => values,
            InitializerValues::Raw(bytes) => bytes
                .chunks_exact(4)
                .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
                .collect(),
        })
    }
}

/// All initializers of the model's graph, by name.
pub fn read_initializers(onnx: &[u8]) -> Result<HashMap<String, Initializer>, prost::DecodeError> {
    let graph = ModelProto::decode(onnx)?.graph.unwrap_or_default();
    Ok(graph
        .initializer
        .into_iter()
        .map(|tensor| {
            let values = if tensor.raw_data.is_empty() {
                InitializerValues::Float(tensor.float_data)
            } else {
                InitializerValues::Raw(tensor.raw_data)
            };
            let initializer = Initializer {
                // Negative dims do not occur in initializers; they would fail the shape checks.
                dims: tensor.dims.iter().map(|&dim| dim.max(0) as usize).collect(),
                data_type: tensor.data_type,
                values,
            };
            (tensor.name, initializer)
        })
        .collect())
}
