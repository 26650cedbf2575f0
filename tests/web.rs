//! The gateway's pages in a real browser (Debian's headless chromium through chromedriver), over
//! the real servers and the `prism` services: what a person sees after uploading bus.jpg, a copy
//! of it and a corrupt file, after a reload, on a phone-sized screen, and on the admin page.
//! Screenshots of each page are saved as test artifacts (their paths are printed).

use prism_e2e::browser::Browser;
use prism_e2e::{DEADLINE, Services, prepare, run_environment, run_name, settings_for};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// An iPhone 12-15's viewport width in CSS pixels.
const PHONE_WIDTH: u32 = 390;

/// What each upload card shows, read from the DOM as a person would see it.
const CARDS: &str = r#"
const shown = (element) => element && !element.closest("[hidden]");
return [...document.querySelectorAll("[data-testid=upload-card]")].map((card) => {
  const annotated = card.querySelector("[data-testid=annotated]");
  const letter = card.querySelector("[data-testid=dead-letter]");
  return {
    name: card.querySelector("[data-testid=card-name]").textContent,
    state: card.dataset.state,
    classes: [...card.querySelectorAll("[data-testid=detection-class]")]
      .filter(shown).map((cell) => cell.textContent).sort(),
    labels: [...card.querySelectorAll("[data-testid=classes] li")]
      .filter(shown).map((item) => item.textContent),
    annotated_width: shown(annotated) && annotated.complete ? annotated.naturalWidth : 0,
    thumbnails_loaded: [...card.querySelectorAll("[data-testid=thumbnail]")]
      .filter((image) => shown(image) && image.complete && image.naturalWidth > 0).length,
    seen_before: shown(card.querySelector("[data-testid=seen-before]")),
    reason: shown(letter) ? card.querySelector("[data-testid=dead-letter-reason]").textContent : null,
    code: shown(letter) ? card.querySelector("[data-testid=dead-letter-code]").textContent : null,
  };
});
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_uploads_pictures_and_sees_their_detections_copies_and_failures() {
    let run = run_name();
    let environment = run_environment(&run);
    let settings = settings_for(&environment);
    prepare(&settings).await;
    let mut services = Services::start(
        &environment,
        &[
            &["serve", "dedup"],
            &["serve", "thumbnail"],
            &["serve", "detect"],
            &["serve", "classify"],
        ],
    );
    let gateway = services.start_gateway(&[]);

    let files = test_files(&run);
    let browser = Browser::start(1280, 1000).await;
    let client = browser.client();
    client.goto(&gateway.url).await.unwrap();
    browser
        .wait_for(
            "the live stream",
            DEADLINE,
            "return document.querySelector('[data-testid=connection]').dataset.state === 'live'",
        )
        .await;

    // One at a time, so the copy is the one that finds its content seen before.
    pick(&browser, &files.bus).await;
    let bus = wait_for_card(&browser, "bus.jpg", |card| {
        card["classes"].as_array().is_some_and(|c| !c.is_empty())
            && card["labels"].as_array().is_some_and(|l| !l.is_empty())
            && card["annotated_width"].as_u64() > Some(0)
            && card["thumbnails_loaded"] == 3
    })
    .await;
    let labels = bus["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 5, "the five likeliest classes: {bus}");
    assert!(
        labels[0].as_str().unwrap().starts_with("minibus ("),
        "bus.jpg's likeliest ImageNet class, with its score: {bus}"
    );
    assert_eq!(
        bus["classes"],
        json!(["bus", "person", "person", "person", "person"]),
        "{bus}"
    );
    assert_eq!(bus["seen_before"], false, "{bus}");
    assert_eq!(bus["reason"], Value::Null, "{bus}");

    pick(&browser, &files.copy).await;
    let copy = wait_for_card(&browser, "bus copy.jpg", |card| {
        card["seen_before"] == true
            && card["annotated_width"].as_u64() > Some(0)
            && card["thumbnails_loaded"] == 3
    })
    .await;
    assert_eq!(copy["classes"], bus["classes"], "{copy}");
    assert_eq!(copy["labels"], bus["labels"], "{copy}");
    assert_eq!(copy["annotated_width"], bus["annotated_width"], "{copy}");

    pick(&browser, &files.corrupt).await;
    let corrupt = wait_for_card(&browser, "corrupt.jpg", |card| card["reason"].is_string()).await;
    assert!(
        ["corrupt_image", "unsupported_format"].contains(&corrupt["code"].as_str().unwrap()),
        "{corrupt}"
    );
    assert!(
        corrupt["reason"].as_str().unwrap().len() > 20,
        "a reason a person can act on: {corrupt}"
    );
    assert_eq!(corrupt["classes"], json!([]), "{corrupt}");
    assert_eq!(corrupt["labels"], json!([]), "{corrupt}");
    browser.full_page_screenshot("upload").await;

    // A reload keeps the session's cards, filled in again from the gateway.
    client.refresh().await.unwrap();
    let reloaded = browser
        .wait_for(
            "the cards after a reload",
            DEADLINE,
            &format!(
                "const cards = (() => {{ {CARDS} }})();
                 const bus = cards.find((c) => c.name === 'bus.jpg');
                 return cards.length === 3 && bus && bus.classes.length === 5 && bus.annotated_width > 0
                   && cards.some((c) => c.reason) && cards"
            ),
        )
        .await;
    let names: Vec<&str> = reloaded
        .as_array()
        .unwrap()
        .iter()
        .map(|card| card["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["corrupt.jpg", "bus copy.jpg", "bus.jpg"]);

    // On a phone: nothing wider than the screen, so nothing scrolls sideways.
    client.set_window_size(PHONE_WIDTH, 844).await.unwrap();
    let widths = browser
        .eval(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            Vec::new(),
        )
        .await;
    assert_eq!(
        widths[1], PHONE_WIDTH,
        "the viewport is a phone's: {widths}"
    );
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the upload page overflows a {PHONE_WIDTH} px screen: {widths}"
    );
    browser.screenshot("upload-phone").await;
    client.set_window_size(1280, 1000).await.unwrap();

    // The admin page asks for the token, then counts what happened.
    client
        .goto(&format!("{}/admin", gateway.url))
        .await
        .unwrap();
    browser
        .wait_for(
            "the admin sign-in",
            Duration::from_secs(10),
            "return !document.querySelector('[data-testid=login]').hidden",
        )
        .await;
    let token = client
        .find(fantoccini::Locator::Css("[data-testid=token]"))
        .await
        .unwrap();
    token.send_keys(&gateway.admin_token).await.unwrap();
    client
        .find(fantoccini::Locator::Css("[data-testid=sign-in]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let figures = browser
        .wait_for(
            "the admin counts",
            Duration::from_secs(30),
            r#"
            const text = (id) => document.querySelector(`[data-testid=${id}]`)?.textContent;
            const figures = {};
            for (const stage of ["thumbnail", "detect", "classify"]) {
              for (const field of ["results-since-start", "deduplicated-share", "dead-letters-since-start"]) {
                figures[`${stage}-${field}`] = text(`${stage}-${field}`);
              }
            }
            figures["detect-batch-sizes"] = text("detect-batch-sizes");
            return figures["detect-results-since-start"] === "2" && figures["thumbnail-dead-letters-since-start"] === "1"
              && figures["detect-dead-letters-since-start"] === "1"
              && figures["classify-results-since-start"] === "2" && figures["classify-dead-letters-since-start"] === "1"
              && figures;
            "#,
        )
        .await;
    assert_eq!(
        figures,
        json!({
            "thumbnail-results-since-start": "2",
            "thumbnail-deduplicated-share": "50 %",
            "thumbnail-dead-letters-since-start": "1",
            "detect-results-since-start": "2",
            "detect-deduplicated-share": "50 %",
            "detect-dead-letters-since-start": "1",
            "classify-results-since-start": "2",
            "classify-deduplicated-share": "50 %",
            "classify-dead-letters-since-start": "1",
            // One bus.jpg inferred alone; its copy did no work.
            "detect-batch-sizes": "1: 1",
        })
    );
    let admin_text = browser
        .eval("return document.body.innerText", Vec::new())
        .await;
    assert!(
        admin_text
            .as_str()
            .unwrap()
            .contains(corrupt["reason"].as_str().unwrap()),
        "the admin page lists the corrupt file's reason: {admin_text}"
    );
    let charted = browser
        .eval(
            "return ['throughput', 'latency'].map((id) => document.getElementById(id).querySelectorAll('polyline, circle').length)",
            Vec::new(),
        )
        .await;
    assert!(
        charted
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n.as_u64() > Some(0)),
        "both charts draw a line: {charted}"
    );
    browser.full_page_screenshot("admin").await;

    client.set_window_size(PHONE_WIDTH, 844).await.unwrap();
    let widths = browser
        .eval(
            "return [document.documentElement.scrollWidth, window.innerWidth]",
            Vec::new(),
        )
        .await;
    assert!(
        widths[0].as_u64() <= widths[1].as_u64(),
        "the admin page overflows a {PHONE_WIDTH} px screen: {widths}"
    );
    browser.close().await;
    services.assert_running();
}

struct TestFiles {
    bus: PathBuf,
    copy: PathBuf,
    corrupt: PathBuf,
}

/// bus.jpg (the detector's test image: 4 persons and a bus), a copy under another name and a
/// file that only starts like a JPEG, in a folder of their own.
fn test_files(run: &str) -> TestFiles {
    let dir = std::env::temp_dir().join(format!("prism-web-{run}"));
    std::fs::create_dir_all(&dir).unwrap();
    let bus = std::fs::read(prism_detect::model::prism_home().join("images/bus.jpg"))
        .expect("bus.jpg is missing from $PRISM_HOME/images: run deploy/local/fetch-assets.sh");
    let mut corrupt = b"\xFF\xD8\xFF\xE0 this is not really a JPEG".to_vec();
    corrupt.extend(std::iter::repeat_n(0x5A, 4000));
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    TestFiles {
        bus: write("bus.jpg", &bus),
        copy: write("bus copy.jpg", &bus),
        corrupt: write("corrupt.jpg", &corrupt),
    }
}

/// Chooses `file` in the page's file picker, as a person does.
async fn pick(browser: &Browser, file: &Path) {
    browser
        .client()
        .find(fantoccini::Locator::Css("[data-testid=file-input]"))
        .await
        .unwrap()
        .send_keys(&file.display().to_string())
        .await
        .unwrap();
}

/// The card named `name` once `ready` holds for it.
async fn wait_for_card(browser: &Browser, name: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let cards = browser.eval(CARDS, Vec::new()).await;
        let card = cards
            .as_array()
            .unwrap()
            .iter()
            .find(|card| card["name"] == name)
            .cloned();
        if let Some(card) = card.filter(&ready) {
            return card;
        }
        if started.elapsed() > DEADLINE {
            let shot = browser.screenshot(&format!("timeout-{name}")).await;
            panic!(
                "the card of {name} never got there (screenshot {}): {cards}",
                shot.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
