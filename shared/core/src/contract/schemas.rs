//! The JSON Schemas of Prism's messages (files in `shared/core/schemas/`), and a validator for them.
//!
//! Tests validate every message they see with [`Schemas`]; downstream teams can use the files directly.

use serde_json::Value;

/// `(file name, contents)` of every schema, shared definitions first.
pub const FILES: [(&str, &str); 5] = [
    (
        "defs.schema.json",
        include_str!("../../schemas/defs.schema.json"),
    ),
    (
        "upload.schema.json",
        include_str!("../../schemas/upload.schema.json"),
    ),
    (
        "job.schema.json",
        include_str!("../../schemas/job.schema.json"),
    ),
    (
        "result.schema.json",
        include_str!("../../schemas/result.schema.json"),
    ),
    (
        "deadletter.schema.json",
        include_str!("../../schemas/deadletter.schema.json"),
    ),
];

/// Where the schemas' `$id`s live; `$ref`s between them resolve here, never over the network.
pub const BASE_URI: &str = "https://prism.dev/schemas/";

/// The kinds of message on Prism's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Upload,
    Job,
    Result,
    DeadLetter,
}

impl MessageKind {
    fn file(self) -> &'static str {
        match self {
            MessageKind::Upload => "upload.schema.json",
            MessageKind::Job => "job.schema.json",
            MessageKind::Result => "result.schema.json",
            MessageKind::DeadLetter => "deadletter.schema.json",
        }
    }
}

fn contents(file: &str) -> Option<Value> {
    FILES
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| serde_json::from_str(text).expect("schema files are valid JSON"))
}

/// Serves the schema files to the validator by URI.
struct Bundled;

impl jsonschema::Retrieve for Bundled {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        uri.as_str()
            .strip_prefix(BASE_URI)
            .and_then(contents)
            .ok_or_else(|| format!("no bundled schema at {}", uri.as_str()).into())
    }
}

pub struct Schemas {
    validators: Vec<(MessageKind, jsonschema::Validator)>,
}

impl Default for Schemas {
    fn default() -> Self {
        let validators = [
            MessageKind::Upload,
            MessageKind::Job,
            MessageKind::Result,
            MessageKind::DeadLetter,
        ]
        .into_iter()
        .map(|kind| {
            let schema = contents(kind.file()).expect("bundled schema");
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .with_retriever(Bundled)
                .build(&schema)
                .unwrap_or_else(|error| panic!("{} does not compile: {error}", kind.file()));
            (kind, validator)
        })
        .collect();
        Schemas { validators }
    }
}

impl Schemas {
    /// Every way `message` breaks its schema, as readable lines.
    pub fn check(&self, kind: MessageKind, message: &Value) -> Result<(), String> {
        let (_, validator) = self
            .validators
            .iter()
            .find(|(k, _)| *k == kind)
            .expect("a validator per kind");
        let errors: Vec<String> = validator
            .iter_errors(message)
            .map(|error| format!("{} at {}", error, error.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{kind:?} breaks its schema: {}\n{message}",
                errors.join("; ")
            ))
        }
    }

    /// Like [`Schemas::check`] on raw message bytes.
    pub fn check_bytes(&self, kind: MessageKind, payload: &[u8]) -> Result<(), String> {
        let message: Value = serde_json::from_slice(payload)
            .map_err(|error| format!("{kind:?} is not JSON: {error}"))?;
        self.check(kind, &message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::ingest::UploadEvent;
    use crate::contract::{OutputObject, SourceObject, StageName};
    use crate::ports::claims::{Admission, SeenSource, Work, admit, finish, memory::MemoryIndex};
    use serde_json::json;

    fn source() -> SourceObject {
        SourceObject {
            bucket: "in".into(),
            key: "a b/c.jpg".into(),
            etag: "etag".into(),
            size: 10,
            batch_job: None,
        }
    }

    #[tokio::test]
    async fn messages_the_code_makes_match_their_schemas() {
        let schemas = Schemas::default();
        let hash = "ab".repeat(32);
        let work = Work {
            stage: StageName::Detect,
            fingerprint: "0123456789abcdef",
            content_hash: &hash,
        };
        let seen = SeenSource {
            source: source(),
            received_at: chrono::Utc::now(),
        };
        let index = MemoryIndex::default();
        let Admission::Run(job) = admit(
            &index,
            work,
            seen.clone(),
            std::time::Duration::from_secs(9),
        )
        .await
        .unwrap() else {
            panic!()
        };
        schemas.check(MessageKind::Job, &json!(job)).unwrap();

        let output = OutputObject {
            bucket: "out".into(),
            key: "detections/x/annotated.jpg".into(),
            content_type: "image/jpeg".into(),
            width: Some(10),
            height: Some(20),
            bytes: 5,
        };
        let mut payload = serde_json::Map::new();
        payload.insert(
            "detections".into(),
            json!([{"class": "bus", "class_id": 5, "confidence": 0.8, "box": {"x1": 1.0, "y1": 2.0, "x2": 3.0, "y2": 4.0}}]),
        );
        let finished = finish(&index, &job, Ok((vec![output], payload)))
            .await
            .unwrap();
        let result = finished
            .claim
            .result_for(&seen, false, std::time::Duration::from_millis(3));
        schemas.check(MessageKind::Result, &json!(result)).unwrap();

        // A detect result without detections, or with an unknown field, is refused.
        let mut broken = json!(result);
        broken.as_object_mut().unwrap().remove("detections");
        assert!(schemas.check(MessageKind::Result, &broken).is_err());
        let mut broken = json!(result);
        broken["surprise"] = json!(1);
        assert!(schemas.check(MessageKind::Result, &broken).is_err());

        // A classify result must list its classes, each a probability of an ImageNet class.
        let mut classified = json!(result);
        classified["stage"] = json!("classify");
        classified.as_object_mut().unwrap().remove("detections");
        assert!(schemas.check(MessageKind::Result, &classified).is_err());
        classified["classes"] = json!([{"index": 967, "label": "espresso", "score": 0.95}]);
        schemas.check(MessageKind::Result, &classified).unwrap();
        classified["classes"][0]["score"] = json!(1.5);
        assert!(schemas.check(MessageKind::Result, &classified).is_err());

        let event = UploadEvent::for_object(&source(), Some("image/jpeg"), chrono::Utc::now());
        schemas.check(MessageKind::Upload, &json!(event)).unwrap();
    }

    #[test]
    fn dead_letters_match_their_schema() {
        use crate::ports::bus::Delivery;
        use crate::runtime::consumer::{ProcessError, dead_letter};
        let schemas = Schemas::default();
        let delivery = Delivery {
            topic: "prism.uploads".into(),
            partition: 3,
            offset: 42,
            key: None,
            payload: b"not json".to_vec(),
            traceparent: None,
        };
        let error = ProcessError::permanent("corrupt_image", "JPEG ends early").about(&source());
        let letter = dead_letter("prism.deadletter", "thumbnail", &delivery, &error, 2);
        schemas
            .check_bytes(MessageKind::DeadLetter, &letter.payload)
            .unwrap();
        let error = ProcessError::permanent("Bad Code", "x");
        let letter = dead_letter("prism.deadletter", "dedup", &delivery, &error, 1);
        assert!(
            schemas
                .check_bytes(MessageKind::DeadLetter, &letter.payload)
                .is_err()
        );
    }
}
