//! Trace export: the spans of a service go to an OTLP/HTTP collector, in the trace the message
//! named. Its own process, since export is set up once per process.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use prism_core::ports::bus::Delivery;
use prism_core::runtime::trace::{Hop, export};
use std::sync::mpsc;

/// What the collector received: the path, the content type and the body of each request.
type Received = (String, String, Vec<u8>);

/// A collector that answers every export with 200 and hands the requests over.
fn collector() -> (String, mpsc::Receiver<Received>) {
    let (sent, received) = mpsc::channel();
    let (address_sent, address) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            address_sent.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new().route(
                "/{*path}",
                post(move |uri: Uri, headers: HeaderMap, body: Bytes| {
                    let content_type = headers
                        .get("content-type")
                        .and_then(|value| value.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    sent.send((uri.path().to_string(), content_type, body.to_vec()))
                        .unwrap();
                    async { StatusCode::OK }
                }),
            );
            axum::serve(listener, app).await.unwrap();
        });
    });
    let address = address.recv().unwrap();
    (format!("http://{address}"), received)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[test]
fn a_services_spans_go_to_the_collector_in_the_trace_their_message_named() {
    let (endpoint, received) = collector();
    let provider = export("prism-dedup", &endpoint).unwrap();
    let delivery = Delivery {
        topic: "prism.uploads".into(),
        partition: 0,
        offset: 7,
        key: None,
        payload: Vec::new(),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
    };
    Hop::handling("dedup", &delivery).end(Some("corrupt_image: JPEG ends early"));
    provider.shutdown().unwrap();

    let (path, content_type, body) = received
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("an export request");
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    let trace_id: Vec<u8> = (0..16)
        .map(|at| {
            u8::from_str_radix(&"4bf92f3577b34da6a3ce929d0e0e4736"[2 * at..2 * at + 2], 16).unwrap()
        })
        .collect();
    assert!(contains(&body, &trace_id), "the upstream trace id");
    assert!(
        contains(&body, &0x00f067aa0ba902b7u64.to_be_bytes()),
        "its parent span"
    );
    assert!(contains(&body, b"prism-dedup"), "the service name");
    assert!(contains(&body, b"dedup prism.uploads"), "the span name");
    assert!(
        contains(&body, b"corrupt_image: JPEG ends early"),
        "the failure"
    );
}
