//! `prism run`, the embedded mode, on the sample photos `deploy/local/fetch-assets.sh` fetches:
//! its summary says what each picture shows.

use std::process::Command;

#[test]
fn prism_run_prints_the_likeliest_class_of_each_sample_photo() {
    let images = prism_detect::model::prism_home().join("images");
    let scratch =
        std::env::temp_dir().join(format!("prism-embedded-{}", uuid::Uuid::new_v4().simple()));
    let input = scratch.join("in");
    std::fs::create_dir_all(&input).unwrap();
    for name in ["chelsea.png", "coffee.png"] {
        std::fs::copy(images.join(name), input.join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}; run deploy/local/fetch-assets.sh"));
    }
    let run = Command::new(prism_e2e::prism_binary())
        .arg("run")
        .arg(&input)
        .arg("--out")
        .arg(scratch.join("out"))
        .output()
        .expect("cannot start prism");
    let printed = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "prism run exited {}:\n{printed}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    // All three stages by default.
    for stage in ["thumbnail", "detect", "classify"] {
        assert!(
            printed.contains(&format!("{stage:<10} 2 processed")),
            "{stage} missing:\n{printed}"
        );
    }
    let likeliest = |name: &str| {
        let line = printed.lines().find(|line| line.trim().starts_with(name));
        line.unwrap_or_else(|| panic!("no class for {name}:\n{printed}"))
            .trim()
            .to_owned()
    };
    let chelsea = likeliest("chelsea.png: ");
    assert!(
        ["tiger cat", "Egyptian cat", "tabby"]
            .iter()
            .any(|cat| chelsea.starts_with(&format!("chelsea.png: {cat} ("))),
        "{chelsea}"
    );
    assert_eq!(likeliest("coffee.png: "), "coffee.png: espresso (96%)");
    std::fs::remove_dir_all(&scratch).unwrap();
}
