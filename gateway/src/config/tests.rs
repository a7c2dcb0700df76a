//! Config parsing and validation: good files resolve with overrides, bad
//! ones are refused with file, line and field.

use std::path::Path;

use super::*;

fn with_source(body: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = body.replace("SRC", &dir.path().display().to_string());
    (dir, text)
}

const GOOD: &str = r#"
[gateway]
listen = "127.0.0.1:0"

[defaults.scaling]
target_concurrency = 4
scale_to_zero_after = "2s"

[defaults.queue]
timeout = "5s"

[[models]]
name = "a"
source = "SRC"

[[models]]
name = "b"
source = "SRC"
kind = "tabular"
[models.scaling]
target_concurrency = 2
min_instances = 1
[models.queue]
max_depth = 7
response_timeout = "90s"
"#;

#[test]
fn models_override_defaults_field_by_field() {
    let (_d, text) = with_source(GOOD);
    let c = parse(&text, Path::new("good.toml")).expect("valid");
    assert_eq!(c.gateway.listen, "127.0.0.1:0");
    assert_eq!(c.gateway.admin_listen, "127.0.0.1:9090");
    let (a, b) = (&c.models[0], &c.models[1]);
    assert_eq!(a.scaling.target_concurrency, 4);
    assert_eq!(a.scaling.min_instances, 0);
    assert_eq!(a.scaling.scale_to_zero_after, Duration::from_secs(2));
    assert_eq!(a.queue.timeout, Duration::from_secs(5));
    assert_eq!(a.queue.max_depth, QueuePolicy::default().max_depth);
    assert_eq!(b.scaling.target_concurrency, 2);
    assert_eq!(b.scaling.min_instances, 1);
    assert_eq!(b.scaling.scale_to_zero_after, Duration::from_secs(2));
    assert_eq!(b.queue.max_depth, 7);
    assert_eq!(b.queue.response_timeout, Duration::from_secs(90));
    assert_eq!(a.queue.response_timeout, Duration::from_secs(300));
    assert_eq!(b.kind, Some(ModelKind::Tabular));
    assert_eq!(a.device, "cpu");
    assert_eq!(c.gateway.gpu_placement, Policy::Spread);
}

#[test]
fn gpu_devices_and_the_placement_policy_parse() {
    let (_d, text) = with_source(
        "[gateway]\ngpu_placement = \"pack\"\n\
         [[models]]\nname = \"a\"\nsource = \"SRC\"\ndevice = \"cuda\"\n\
         [[models]]\nname = \"b\"\nsource = \"SRC\"\ndevice = \"cuda:1\"\n",
    );
    let c = parse(&text, Path::new("gpu.toml")).expect("valid");
    assert_eq!(c.gateway.gpu_placement, Policy::Pack);
    assert_eq!(c.models[0].device_request(), DeviceRequest::AnyGpu);
    assert_eq!(c.models[1].device_request(), DeviceRequest::Gpu(1));
}

#[test]
fn registering_snapshots_ahead_is_on_unless_turned_off() {
    let (_d, text) = with_source(GOOD);
    assert!(
        parse(&text, Path::new("t.toml"))
            .expect("valid")
            .gateway
            .gpu_preregister
    );
    let off = text.replace("[gateway]\n", "[gateway]\ngpu_preregister = false\n");
    assert!(
        !parse(&off, Path::new("t.toml"))
            .expect("valid")
            .gateway
            .gpu_preregister
    );
    let bad = text.replace("[gateway]\n", "[gateway]\ngpu_preregister = \"no\"\n");
    assert!(parse(&bad, Path::new("t.toml")).is_err());
}

#[test]
fn cors_origins_are_off_unless_listed_and_checked() {
    let (_d, text) = with_source(GOOD);
    let c = parse(&text, Path::new("t.toml")).expect("valid");
    assert!(!c.gateway.cors_allow_origins.enabled());
    let on = text.replace(
        "[gateway]\n",
        "[gateway]\ncors_allow_origins = [\"https://app.example.com\"]\n",
    );
    let c = parse(&on, Path::new("t.toml")).expect("valid");
    assert!(c.gateway.cors_allow_origins.enabled());
    let bad = text.replace(
        "[gateway]\n",
        "[gateway]\ncors_allow_origins = [\"app.example.com/\"]\n",
    );
    let e = parse(&bad, Path::new("t.toml")).expect_err("not an origin");
    assert!(
        e.to_string()
            .contains("gateway.cors_allow_origins: \"app.example.com/\" is not an origin"),
        "{e}"
    );
}

#[test]
fn a_chat_model_may_ask_for_a_gpu() {
    let (_d, text) = with_source(
        "[[models]]\nname = \"c\"\nsource = \"SRC\"\nkind = \"chat\"\ndevice = \"cuda\"\n",
    );
    let c = parse(&text, Path::new("chat.toml")).expect("a chat model on a GPU is accepted");
    assert_eq!(c.models[0].device_request(), DeviceRequest::AnyGpu);
}

/// Parses `body` and returns its error, which must name `line` and `field`.
fn refused(body: &str, line: usize, field: &str) -> ConfigError {
    let (_d, text) = with_source(body);
    let e = parse(&text, Path::new("bad.toml")).expect_err("refused");
    assert_eq!(e.file, "bad.toml");
    assert_eq!((e.line, e.field.as_str()), (line, field), "{e}");
    e
}

#[test]
fn an_unreadable_file_is_named_without_a_line() {
    let e = load(Path::new("/nonexistent/thaw.toml")).expect_err("refused");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/thaw.toml: cannot read: "),
        "{e}"
    );
}

#[test]
fn a_kind_the_source_contradicts_is_refused() {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/models/credit-score");
    let text = format!(
        "[[models]]\nname = \"a\"\nsource = \"{}\"\nkind = \"embedding\"\n",
        source.display()
    );
    let e = parse(&text, Path::new("k.toml")).expect_err("refused");
    assert_eq!((e.line, e.field.as_str()), (4, "models[0].kind"), "{e}");
    assert!(e.message.contains("are of kind tabular"), "{e}");
    let right = text.replace("embedding", "tabular");
    parse(&right, Path::new("k.toml")).expect("the kind it holds");
}

#[test]
fn errors_name_file_line_and_field() {
    let e = refused(
        "[gateway]\nlisten = \"127.0.0.1:1\"\nlisen = \"x\"\n",
        3,
        "gateway.lisen",
    );
    assert!(e.message.contains("lisen"), "{e}");
    assert_eq!(
        e.to_string().split(": ").take(2).collect::<Vec<_>>(),
        ["bad.toml:3", "gateway.lisen"]
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\ncolour = \"red\"\n",
        4,
        "models[0].colour",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\n[[models]]\nname = \"b\"\n[models.scaling]\nmax_instances = \"2\"\n",
        7,
        "models[1].scaling.max_instances",
    );
    let e = refused("[[models]]\nname = \"a\"\n", 1, "models[0].source");
    assert!(e.message.contains("missing field"), "{e}");
    refused("[gateway]\nlisten = \"localhost\"\n", 2, "gateway.listen");
    refused(
        "[gateway]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"\n",
        3,
        "gateway.admin_listen",
    );
    refused(
        "[gateway]\nmax_body_bytes = \"0\"\n",
        2,
        "gateway.max_body_bytes",
    );
    refused(
        "[defaults.queue]\ntimeout = \"3000000000000000h\"\n",
        2,
        "defaults.queue.timeout",
    );
    refused(
        "[defaults.scaling]\nmin_instances = 5\nmax_instances = 2\n",
        2,
        "defaults.scaling.min_instances",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\n[models.scaling]\ntarget_concurrency = 50\n",
        5,
        "models[0].scaling.target_concurrency",
    );
    refused(
        "[defaults.scaling]\nstable_window = \"0s\"\n",
        2,
        "defaults.scaling.stable_window",
    );
    refused(
        "[defaults.scaling]\npanic_window = \"2m\"\n",
        2,
        "defaults.scaling.panic_window",
    );
    refused(
        "[defaults.scaling]\npanic_threshold = 0.5\n",
        2,
        "defaults.scaling.panic_threshold",
    );
    refused(
        "[defaults.scaling]\nscale_down_delay = \"soon\"\n",
        2,
        "defaults.scaling.scale_down_delay",
    );
    refused(
        "[defaults.queue]\nmax_depth = 0\n",
        2,
        "defaults.queue.max_depth",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"/nonexistent/model\"\n",
        3,
        "models[0].source",
    );
    refused(
        "[[models]]\nname = \"a b\"\nsource = \"SRC\"\n",
        2,
        "models[0].name",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\ndevice = \"tpu\"\n",
        4,
        "models[0].device",
    );
    let e = refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\ndevice = \"cuda:x\"\n",
        4,
        "models[0].device",
    );
    assert!(e.message.contains("cpu, cuda or cuda:N"), "{e}");
    refused(
        "[gateway]\ngpu_placement = \"balanced\"\n",
        2,
        "gateway.gpu_placement",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\nkind = \"vision\"\n",
        4,
        "models[0].kind",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\n\n[[models]]\nname = \"a\"\nsource = \"SRC\"\n",
        6,
        "models[1].name",
    );
    refused(
        "[defaults.scaling]\nmin_instances = \"one\"\n",
        2,
        "defaults.scaling.min_instances",
    );
    refused(
        "[defaults.scaling]\nmin_instances = 1\n[[models]]\nname = \"a\"\nsource = \"SRC\"\n[models.scaling]\nmax_instances = 0\n",
        7,
        "models[0].scaling.max_instances",
    );
    refused(
        "[defaults.scaling]\nmin_instances = 3\n[[models]]\nname = \"a\"\nsource = \"SRC\"\n[models.scaling]\nmax_instances = 2\n",
        2,
        "models[0].scaling.min_instances",
    );
    refused(
        "[defaults.scaling]\nscale_to_zero_after = \"0ms\"\n",
        2,
        "defaults.scaling.scale_to_zero_after",
    );
    refused(
        "[defaults.queue]\ntimeout = \"0s\"\n",
        2,
        "defaults.queue.timeout",
    );
    refused(
        "[defaults.queue]\nresponse_timeout = \"0s\"\n",
        2,
        "defaults.queue.response_timeout",
    );
    refused(
        "[gateway]\nadmin_listen = \"127.0.0.1\"\n",
        2,
        "gateway.admin_listen",
    );
    refused(
        "[gateway]\nmax_body_bytes = \"2 parsecs\"\n",
        2,
        "gateway.max_body_bytes",
    );
    refused("[gateway]\nadmin_token = \" \"\n", 2, "gateway.admin_token");
    refused(
        "[gateway]\nshutdown_grace = \"soon\"\n",
        2,
        "gateway.shutdown_grace",
    );
    refused(
        "[gateway]\nbody_timeout = \"0s\"\n",
        2,
        "gateway.body_timeout",
    );
    refused(
        "[[models]]\nname = \"a\"\nsource = \"SRC\"\nmemory_limit = \"lots\"\n",
        4,
        "models[0].memory_limit",
    );
}

#[test]
fn admin_token_and_shutdown_grace() {
    let (_d, text) = with_source(GOOD);
    let c = parse(&text, Path::new("good.toml")).expect("valid");
    assert_eq!(c.gateway.admin_token, None);
    assert_eq!(c.gateway.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.gateway.body_timeout, Duration::from_secs(60));
    let text = "[gateway]\nadmin_token = \"s3cret\"\nshutdown_grace = \"5s\"\n";
    let c = parse(text, Path::new("t.toml")).expect("valid");
    assert_eq!(c.gateway.admin_token, Some(Secret("s3cret".into())));
    assert_eq!(c.gateway.shutdown_grace, Duration::from_secs(5));
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the token is in Debug"
    );
}

#[test]
fn health_checks_default_and_are_validated() {
    let (_d, text) = with_source(GOOD);
    let c = parse(&text, Path::new("good.toml")).expect("valid");
    assert_eq!(c.gateway.health, HealthCheck::default());
    let text = "[gateway]\nhealth_interval = \"250ms\"\nhealth_failures = 2\n";
    let c = parse(text, Path::new("health.toml")).expect("valid");
    assert_eq!(
        c.gateway.health,
        HealthCheck {
            interval: Duration::from_millis(250),
            failures: 2,
        }
    );
    refused(
        "[gateway]\nhealth_interval = \"0s\"\n",
        2,
        "gateway.health_interval",
    );
    refused(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nhealth_interval = \"often\"\n",
        3,
        "gateway.health_interval",
    );
    refused(
        "[gateway]\nhealth_failures = 0\n",
        2,
        "gateway.health_failures",
    );
    refused(
        "[gateway]\nhealth_failures = -1\n",
        2,
        "gateway.health_failures",
    );
}

#[test]
fn every_config_in_the_repository_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join("configs")).expect("configs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            checked += 1;
        }
    }
    assert!(checked > 0, "no config checked");
}

#[test]
fn the_reference_config_is_valid_with_its_commented_examples_too() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/reference.toml");
    let text = std::fs::read_to_string(&path).expect("configs/reference.toml");
    // `# key = value` lines are the optional fields' examples.
    let examples: String = text
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest)
                if rest.split_once(" = ").is_some_and(|(k, _)| {
                    k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                }) =>
            {
                rest
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(examples, text, "no commented example found");
    let c = parse(&examples, &path).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.gateway.admin_token.is_some());
    assert_eq!(c.models[0].memory_limit, Some(1 << 30));
}
