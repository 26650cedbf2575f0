//! Reading ONNX initializers and handing them to the network by their Ultralytics names, on
//! small synthetic files (the real weights are exercised in reference.rs).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::Device;
use prism_detect::model::onnx::{
    DATA_TYPE_FLOAT, GraphProto, Initializer, InitializerValues, ModelProto, TensorProto,
    read_initializers,
};
use prism_detect::model::{Detector, DetectorConfig, ModelError, STRIDES, Weights, YoloV8};
use prost::Message;
use sha2::{Digest, Sha256};

/// `TensorProto.DataType.INT64`.
const DATA_TYPE_INT64: i32 = 7;

fn raw_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.to_owned(),
        dims: dims.to_vec(),
        data_type: DATA_TYPE_FLOAT,
        raw_data: values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect(),
        ..Default::default()
    }
}

fn onnx_file(tensors: Vec<TensorProto>) -> Vec<u8> {
    ModelProto {
        graph: Some(GraphProto {
            initializer: tensors,
        }),
    }
    .encode_to_vec()
}

fn float_initializer(dims: &[usize], values: Vec<f32>) -> Initializer {
    Initializer {
        dims: dims.to_vec(),
        data_type: DATA_TYPE_FLOAT,
        values: InitializerValues::Float(values),
    }
}

fn zeros(dims: &[usize]) -> Initializer {
    float_initializer(dims, vec![0.0; dims.iter().product()])
}

/// Every tensor the network asks for, with its shape, found by asking the loader itself: offer
/// a wrongly shaped stand-in for each tensor it reports missing and read the shape it wants.
fn network_layout() -> Vec<(String, Vec<usize>)> {
    let mut offered: HashMap<String, Initializer> = HashMap::new();
    let mut layout = Vec::new();
    loop {
        match YoloV8::load(Weights::new(offered.clone(), Device::Cpu)) {
            Ok(_) => return layout,
            Err(ModelError::MissingTensor { name }) => {
                offered.insert(name, zeros(&[0]));
            }
            Err(ModelError::ShapeMismatch {
                name,
                expected,
                found,
            }) => {
                assert_eq!(found, [0], "{name} was offered with another shape");
                offered.insert(name.clone(), zeros(&expected));
                layout.push((name, expected));
            }
            Err(other) => panic!("unexpected loader error: {other}"),
        }
    }
}

fn weights_from_layout(layout: &[(String, Vec<usize>)]) -> HashMap<String, Initializer> {
    layout
        .iter()
        .map(|(name, dims)| (name.clone(), zeros(dims)))
        .collect()
}

fn temporary_path(name: &str) -> PathBuf {
    let directory =
        std::env::temp_dir().join(format!("prism-detect-weights-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("temporary directory");
    directory.join(name)
}

#[test]
fn initializers_are_read_from_raw_and_float_data() {
    let bytes = onnx_file(vec![
        raw_tensor("model.0.conv.bias", &[2], &[1.5, -2.0]),
        TensorProto {
            name: "model.0.conv.weight".into(),
            dims: vec![2, 1, 1, 1],
            data_type: DATA_TYPE_FLOAT,
            float_data: vec![0.25, 4.0],
            ..Default::default()
        },
        TensorProto {
            name: "onnx::Split_1".into(),
            dims: vec![2],
            data_type: DATA_TYPE_INT64,
            raw_data: vec![0; 16],
            ..Default::default()
        },
    ]);
    let initializers = read_initializers(&bytes).expect("valid protobuf");
    assert_eq!(initializers.len(), 3);
    let bias = initializers["model.0.conv.bias"].clone();
    assert_eq!(bias.dims, [2]);
    assert_eq!(bias.into_f32(), Some(vec![1.5, -2.0]));
    let weight = initializers["model.0.conv.weight"].clone();
    assert_eq!(weight.dims, [2, 1, 1, 1]);
    assert_eq!(weight.into_f32(), Some(vec![0.25, 4.0]));
    assert_eq!(
        initializers["onnx::Split_1"].clone().into_f32(),
        None,
        "int64 is not float"
    );
}

#[test]
fn garbage_is_not_an_onnx_model() {
    assert!(read_initializers(&[0xff, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn weights_are_checked_for_presence_shape_type_and_length() {
    let mut tensors = HashMap::new();
    tensors.insert(
        "good".to_owned(),
        float_initializer(&[2, 1], vec![1.0, 2.0]),
    );
    tensors.insert("short".to_owned(), float_initializer(&[3], vec![1.0]));
    tensors.insert(
        "integers".to_owned(),
        Initializer {
            dims: vec![1],
            data_type: DATA_TYPE_INT64,
            values: InitializerValues::Raw(vec![0; 8]),
        },
    );
    let mut weights = Weights::new(tensors, Device::Cpu);

    let good = weights.take("good", &[2, 1]).expect("present");
    assert_eq!(
        good.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32"),
        [1.0, 2.0]
    );
    assert!(
        matches!(weights.take("good", &[2, 1]), Err(ModelError::MissingTensor { name }) if name == "good")
    );
    assert!(
        matches!(weights.take("absent", &[1]), Err(ModelError::MissingTensor { name }) if name == "absent")
    );
    assert!(matches!(
        weights.take("short", &[3]),
        Err(ModelError::CorruptTensor {
            expected: 3,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        weights.take("integers", &[1]),
        Err(ModelError::UnsupportedTensor {
            data_type: DATA_TYPE_INT64,
            ..
        })
    ));
}

#[test]
fn network_takes_every_weight_by_its_ultralytics_name() {
    let layout = network_layout();
    // 63 convolutions (27 backbone, 18 neck, 18 head), each weight + bias, and the DFL weight:
    // the 127 "model.*" initializers of the Ultralytics export.
    assert_eq!(layout.len(), 2 * 63 + 1);
    let shape_of = |name: &str| {
        layout
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, dims)| dims.clone())
    };
    for (name, dims) in [
        ("model.0.conv.weight", vec![16, 3, 3, 3]),
        ("model.2.cv1.conv.weight", vec![32, 32, 1, 1]),
        ("model.2.m.0.cv1.conv.weight", vec![16, 16, 3, 3]),
        ("model.6.m.1.cv2.conv.bias", vec![64]),
        ("model.9.cv2.conv.weight", vec![256, 512, 1, 1]),
        ("model.12.cv1.conv.weight", vec![128, 384, 1, 1]),
        ("model.21.cv2.conv.weight", vec![256, 384, 1, 1]),
        ("model.22.cv2.2.0.conv.weight", vec![64, 256, 3, 3]),
        ("model.22.cv2.0.2.weight", vec![64, 64, 1, 1]),
        ("model.22.cv3.1.2.bias", vec![80]),
        ("model.22.dfl.conv.weight", vec![1, 16, 1, 1]),
    ] {
        assert_eq!(shape_of(name), Some(dims), "{name}");
    }
}

#[test]
fn network_runs_a_batch_and_gives_raw_head_outputs_per_stride() {
    let network = YoloV8::load(Weights::new(
        weights_from_layout(&network_layout()),
        Device::Cpu,
    ))
    .expect("complete");
    let heads = network.forward(&vec![0.0; 2 * 3 * 64 * 96], 64, 96);
    let shapes: Vec<_> = heads
        .iter()
        .map(|head| (head.stride, head.height, head.width, head.channels))
        .collect();
    assert_eq!(
        shapes,
        [
            (STRIDES[0], 8, 12, 144),
            (STRIDES[1], 4, 6, 144),
            (STRIDES[2], 2, 3, 144)
        ]
    );
    for head in &heads {
        assert_eq!(
            head.values.len(),
            2 * head.channels * head.height * head.width
        );
    }
}

#[test]
fn leftover_network_weights_mean_another_model() {
    let mut tensors = weights_from_layout(&network_layout());
    // Exporter constants outside "model." are fine; an extra layer is not.
    tensors.insert(
        "/model.22/Constant_12_output_0".to_owned(),
        zeros(&[1, 2, 8400]),
    );
    tensors.insert("model.23.cv1.conv.weight".to_owned(), zeros(&[1]));
    match YoloV8::load(Weights::new(tensors, Device::Cpu)) {
        Err(ModelError::UnusedTensors { names }) => assert_eq!(names, ["model.23.cv1.conv.weight"]),
        other => panic!("expected UnusedTensors, got {:?}", other.err()),
    }
}

#[test]
fn missing_weights_say_how_to_fetch_them() {
    let config = DetectorConfig {
        weights: temporary_path("absent.onnx"),
        ..DetectorConfig::default()
    };
    let error = Detector::load(&config).expect_err("no such file");
    assert!(matches!(error, ModelError::WeightsMissing { .. }));
    assert!(
        error.to_string().contains("deploy/local/fetch-assets.sh"),
        "{error}"
    );
}

#[test]
fn input_size_must_be_a_multiple_of_the_largest_stride() {
    for input_size in [0, 100] {
        let config = DetectorConfig {
            input_size,
            ..DetectorConfig::default()
        };
        assert!(
            matches!(Detector::load(&config), Err(ModelError::InvalidInputSize(size)) if size == input_size)
        );
    }
}

#[test]
fn detector_loads_an_onnx_file_and_detects_in_a_batch() {
    let layout = network_layout();
    let tensors = layout
        .iter()
        .map(|(name, dims)| {
            let dims: Vec<i64> = dims.iter().map(|&dim| dim as i64).collect();
            let count = dims.iter().product::<i64>() as usize;
            raw_tensor(name, &dims, &vec![0.0; count])
        })
        .collect();
    let path = temporary_path("zeros.onnx");
    let bytes = onnx_file(tensors);
    std::fs::write(&path, &bytes).expect("write synthetic model");

    let config = DetectorConfig {
        weights: path.clone(),
        input_size: 64,
        ..DetectorConfig::default()
    };
    let detector = Detector::load(&config).expect("loads");
    let expected_digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    assert_eq!(detector.weights_digest(), expected_digest);

    // All-zero weights score every class 0.5 everywhere: detections exist, inside each image.
    let images = [
        image::RgbImage::new(50, 30),
        image::RgbImage::new(20, 90),
        image::RgbImage::new(64, 64),
    ];
    let detections = detector.detect(&images).expect("detects");
    assert_eq!(detections.len(), images.len());
    for (image, found) in images.iter().zip(&detections) {
        assert!(!found.is_empty());
        for detection in found {
            assert_eq!(detection.confidence, 0.5);
            assert!(detection.bbox.x1 >= 0.0 && detection.bbox.x2 <= image.width() as f32);
            assert!(detection.bbox.y1 >= 0.0 && detection.bbox.y2 <= image.height() as f32);
        }
    }
    assert!(detector.detect(&[]).expect("empty batch").is_empty());
    assert!(matches!(
        detector.detect(&[image::RgbImage::new(0, 5)]),
        Err(ModelError::EmptyImage {
            index: 0,
            width: 0,
            height: 5
        })
    ));
    std::fs::remove_file(path).ok();
}

#[test]
fn detector_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Detector>();
}
