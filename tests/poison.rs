//! A message the pipeline cannot use, however large, costs one small dead letter and holds up
//! nothing: 200 KB of bytes that are not an event, on the uploads topic over the real broker,
//! become a dead letter far below the broker's message limit (it used to copy the whole message
//! three times over, ~1.2 MB, which the broker refused; dedup retried it for ever and every later
//! upload of that partition waited), and an upload right after it still gets its result.

use prism_core::contract::DeadLetter;
use prism_core::contract::MAX_ORIGINAL_BYTES;
use prism_core::ports::bus::kafka::KafkaPublisher;
use prism_core::ports::bus::{Publication, Publisher};
use prism_core::ports::store::Buckets;
use prism_e2e::{
    DEADLINE, Services, generated, prepare, run_environment, run_name, settings_for, to_pairs,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_poison_message_is_dead_lettered_small_and_holds_nothing_up() {
    let run = run_name();
    let mut environment = run_environment(&run);
    environment.push(("PRISM_ENABLED_STAGES".into(), "[\"thumbnail\"]".into()));
    // One partition: the upload after the poison message waits behind it if anything does.
    environment.push(("PRISM_KAFKA__PARTITIONS".into(), "1".into()));
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let mut services = Services::start(
        &environment,
        &[&["serve", "dedup"], &["serve", "thumbnail"]],
    );

    let poison: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let publisher = KafkaPublisher::new(&settings.kafka).unwrap();
    publisher
        .publish(&Publication {
            topic: settings.topics.uploads.clone(),
            key: "poison".into(),
            payload: poison,
            kind: Default::default(),
            traceparent: None,
        })
        .await
        .unwrap();
    let buckets = Buckets::s3(&settings.s3);
    let after = generated("after-the-poison.png", 5, (64, 48), image::ImageFormat::Png);
    prism_loadgen::upload(&buckets, &settings.input_bucket, to_pairs(&[after]), 1)
        .await
        .unwrap();
    let announce = Services::start(&environment, &[&["watch", "--interval-ms", "200"]]);

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.brokers)
        .set("group.id", format!("e2e-{run}-poison-observer"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let topics = [
        settings.topics.deadletter.as_str(),
        settings.topics.thumbnail_results.as_str(),
    ];
    consumer.subscribe(&topics).unwrap();
    let started = Instant::now();
    let (mut letter, mut result_seen) = (None, false);
    while letter.is_none() || !result_seen {
        services.assert_running();
        assert!(
            started.elapsed() < DEADLINE,
            "after {DEADLINE:?}: dead letter {}, result after it {result_seen}",
            letter.is_some()
        );
        let Ok(Ok(message)) =
            tokio::time::timeout(std::time::Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let payload = message.payload().unwrap_or_default();
        if message.topic() == settings.topics.deadletter {
            assert!(
                payload.len() < 4 * MAX_ORIGINAL_BYTES,
                "{} bytes",
                payload.len()
            );
            letter = Some(serde_json::from_slice::<DeadLetter>(payload).unwrap());
        } else {
            result_seen = true;
        }
    }
    let letter = letter.unwrap();
    assert_eq!(letter.stage, "dedup");
    assert_eq!(letter.error.code, "malformed_event");
    assert_eq!(letter.original_bytes, Some(200_000));
    assert!(letter.original_truncated);
    assert_eq!(letter.origin.topic, settings.topics.uploads);
    drop(announce);
}
